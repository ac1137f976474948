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


def clean_environment(monkeypatch):
    for var in [v for v in __import__("os").environ if v.startswith("USERSIGNALS_")]:
        monkeypatch.delenv(var)


def test_peers_default_to_the_local_stack_and_follow_its_ports_and_data_dir(tmp_path):
    s = load_settings({})
    assert (s.bind_host, s.kv_cluster) == ("127.0.0.1", False)
    assert (s.checkpoint_dir, s.savepoint_dir) == (f"file://{s.data_dir}/checkpoints", f"file://{s.data_dir}/savepoints")
    moved = s.with_overrides(kv_port=7001, broker_port=7002, data_dir=tmp_path)
    assert (moved.kv_url, moved.broker) == ("redis://127.0.0.1:7001/0", "127.0.0.1:7002")
    assert moved.checkpoint_dir == f"file://{tmp_path}/checkpoints"
    # A server bound to every interface: its own processes still reach it on the loopback.
    assert load_settings({"USERSIGNALS_BIND_HOST": "0.0.0.0"}).kv_url == "redis://127.0.0.1:6379/0"


def test_peer_addresses_set_are_kept_whatever_the_local_ports():
    s = load_settings({"USERSIGNALS_BIND_HOST": "0.0.0.0", "USERSIGNALS_BROKER_BOOTSTRAP": "kafka-0:9092,kafka-1:9092",
                       "USERSIGNALS_KV_URL": "redis://kv.svc:6379/0", "USERSIGNALS_KV_CLUSTER": "true",
                       "USERSIGNALS_CHECKPOINT_DIR": "s3://b/chk"})
    assert (s.broker, s.kv_url, s.kv_cluster, s.checkpoint_dir) == ("kafka-0:9092,kafka-1:9092", "redis://kv.svc:6379/0",
                                                                   True, "s3://b/chk")
    moved = s.with_overrides(kv_port=7001, broker_port=7002)
    assert (moved.broker, moved.kv_url) == (s.broker, s.kv_url)
    assert load_settings(s.to_env()) == s


@pytest.mark.parametrize("raw,value", [("true", True), ("True", True), ("1", True), ("false", False),
                                       ("FALSE", False), ("0", False)])
def test_booleans_read_true_or_false(raw, value):
    assert load_settings({"USERSIGNALS_KV_CLUSTER": raw}).kv_cluster is value


@pytest.mark.parametrize("raw", ["yes", "", "on", "2", "treu"])
def test_a_boolean_that_is_not_true_or_false_is_refused_by_name(raw):
    with pytest.raises(ValueError, match=f"USERSIGNALS_KV_CLUSTER={raw!r}: expected true or false"):
        load_settings({"USERSIGNALS_KV_CLUSTER": raw})


def test_a_cluster_url_naming_another_database_is_refused():
    with pytest.raises(ValueError, match="USERSIGNALS_KV_URL='redis://kv:6379/3': a Redis Cluster has database 0 only"):
        load_settings({"USERSIGNALS_KV_URL": "redis://kv:6379/3", "USERSIGNALS_KV_CLUSTER": "true"})


def test_the_old_host_variable_is_refused_with_what_replaced_it():
    with pytest.raises(ValueError, match="USERSIGNALS_HOST='0.0.0.0' is no longer read: set USERSIGNALS_BIND_HOST"):
        load_settings({"USERSIGNALS_HOST": "0.0.0.0"})


def test_the_trimmer_airflow_and_admin_settings_are_read(monkeypatch):
    clean_environment(monkeypatch)
    s = load_settings({"USERSIGNALS_TRIMMER_METRICS_PORT": "9300", "USERSIGNALS_TRIM_INTERVAL_S": "0.25",
                       "USERSIGNALS_AIRFLOW_PORT": "8090", "USERSIGNALS_ADMIN_KEY": "s3cret"})
    assert (s.trimmer_metrics_port, s.trim_interval_s, s.airflow_port, s.admin_key) == (9300, 0.25, 8090, "s3cret")
    assert "s3cret" not in repr(s)
    with pytest.raises(ValueError, match="USERSIGNALS_TRIM_INTERVAL_S='soon' is not a number"):
        load_settings({"USERSIGNALS_TRIM_INTERVAL_S": "soon"})


def test_every_setting_has_a_one_line_help_and_its_own_variable():
    import dataclasses

    from usersignals.settings import _var

    fields = dataclasses.fields(Settings)
    for f in fields:
        help = f.metadata.get("help", "")
        assert help.strip() and "\n" not in help, f.name
    assert len({_var(f.name) for f in fields}) == len(fields)
    assert _var("kv_url") == "USERSIGNALS_KV_URL" and _var("registry_path") == "USERSIGNALS_REGISTRY"



# Variables of other tools' own, read where they are used (not deployment settings).
NOT_SETTINGS = {
    "USERSIGNALS_BENCH_RECORD": "bench/common.py: whether a benchmark run is appended to bench/results",
    "USERSIGNALS_KEEP_DATA": "bench/faults.py: keep the fault run's data directory for a post-mortem",
    "USERSIGNALS_FLOOR_BYTES": "bench/floor_api.py: the body size, from its command line to uvicorn's workers",
}


def test_nothing_outside_settings_reads_usersignals_variables():
    """The platform's parts take USERSIGNALS_* through Settings, never from the environment."""
    import re

    from usersignals.settings import REPO_ROOT

    reads = re.compile(r"""(environ(\.get)?\s*[\[(]|getenv\s*\()\s*["']USERSIGNALS_""")
    offenders = [str(path.relative_to(REPO_ROOT))
                 for part in ("usersignals", "serving", "streaming", "batch", "infra", "analytics", "dags")
                 for path in sorted((REPO_ROOT / part).rglob("*.py"))
                 if path.name != "settings.py" and reads.search(path.read_text())]
    assert offenders == []


def test_every_usersignals_variable_the_code_names_is_a_setting():
    """Settings is the one reader of USERSIGNALS_*: a variable named anywhere else in the code
    (read behind Settings' back, or set for a child) must be a Settings field's."""
    import ast
    import dataclasses

    from usersignals.settings import REPO_ROOT, _var

    known = {_var(f.name) for f in dataclasses.fields(Settings)} | set(NOT_SETTINGS)
    unknown = []
    for part in ("usersignals", "serving", "streaming", "batch", "infra", "analytics", "dags", "bench"):
        for path in sorted((REPO_ROOT / part).rglob("*.py")):
            if path.name == "settings.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and node.value.startswith("USERSIGNALS_") and node.value.rstrip("_").isupper()
                        and " " not in node.value and node.value not in known):
                    unknown.append((str(path.relative_to(REPO_ROOT)), node.value))
    assert unknown == []
