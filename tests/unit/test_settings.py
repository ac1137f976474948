import pytest

from usersignals.settings import Settings, load_settings


def test_defaults_are_the_local_stack(monkeypatch):
    for var in [v for v in __import__("os").environ if v.startswith("USERSIGNALS_")]:
        monkeypatch.delenv(var)
    s = load_settings()
    assert (s.broker, s.kv_url, s.api_port, s.registry_path) == ("127.0.0.1:9092", "redis://127.0.0.1:6379/0", 8000, None)


def test_the_environment_a_child_gets_loads_back_to_the_same_settings(monkeypatch, tmp_path):
    s = Settings().with_overrides(kv_port=7000, data_dir=tmp_path, registry_path=tmp_path / "r.toml",
                                  python_worker_mode="loopback")
    env = s.to_env()
    assert env["USERSIGNALS_REGISTRY"] == str(tmp_path / "r.toml") and env["USERSIGNALS_KV_PORT"] == "7000"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert load_settings() == s


@pytest.mark.parametrize("var,value,message", [
    ("USERSIGNALS_KV_PORT", "six", "is not an integer"),
    ("USERSIGNALS_PYTHON_WORKER_MODE", "thread", "expected 'process' or 'loopback'"),
])
def test_bad_values_name_the_variable(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=message):
        load_settings()


@pytest.mark.parametrize("var,value,message", [
    ("USERSIGNALS_LAKE_CATALOG_TYPE", "hive", "expected 'sql' or 'rest'"),
])
def test_every_word_setting_names_its_choices(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=f"{var}='{value}': {message}"):
        load_settings()


def test_api_workers_default_to_the_cores_and_must_be_positive(monkeypatch):
    import os

    monkeypatch.delenv("USERSIGNALS_API_WORKERS", raising=False)
    assert load_settings().api_workers == (os.cpu_count() or 1)
    monkeypatch.setenv("USERSIGNALS_API_WORKERS", "3")
    assert load_settings().api_workers == 3
    monkeypatch.setenv("USERSIGNALS_API_WORKERS", "0")
    with pytest.raises(ValueError, match="USERSIGNALS_API_WORKERS=0: must be at least 1"):
        load_settings()
