"""Secrets only in Secrets: nothing the cluster gets (the rendered base and overlay, the Helm values)
carries a development key or its sha256, and no ConfigMap holds a secret-looking value."""
import hashlib
import re
import tomllib

import pytest
import yaml

from tests.unit.test_k8s_render import K8S, TARGETS, render
from usersignals.settings import REPO_ROOT

DEFAULT_REGISTRY = REPO_ROOT / "usersignals" / "default_registry.toml"
HELM_VALUES = [K8S / "airflow-values.yaml", K8S / "trino-values.yaml"]


def dev_keys() -> set[str]:
    """The development keys the default registry names ("...-dev-key"), checked against its tenants'
    hashes, so a renamed key cannot slip past this test."""
    text = DEFAULT_REGISTRY.read_text()
    keys = set(re.findall(r'"([a-z0-9-]+-dev-key)"', text))
    tenant_hashes = {t["api_key_sha256"] for t in tomllib.loads(text)["tenants"].values()}
    assert tenant_hashes and tenant_hashes <= {hashlib.sha256(k.encode()).hexdigest() for k in keys}, \
        "a tenant of the default registry has a key whose text the registry does not name"
    return keys


def forbidden() -> dict[str, str]:
    """Each development key and its sha256 -> what it is."""
    found = {}
    for key in dev_keys():
        found[key] = f"the development key {key!r}"
        found[hashlib.sha256(key.encode()).hexdigest()] = f"sha256({key!r})"
    return found


def leaks(text: str) -> list[str]:
    return sorted(what for needle, what in forbidden().items() if needle in text)


# A key that names a secret, or a URI with a password in it.
SECRET_KEY = re.compile(r"(password|passwd|secret|token|credential|private|fernet|(^|[-_])key$)", re.I)
URI_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
HEX_DIGEST = re.compile(r"\b[0-9a-f]{64}\b")


def secret_looking(data: dict[str, str]) -> list[str]:
    """The entries of a ConfigMap's data that look like a secret: a secret's name or a secret's shape
    (a URI with a password, a sha256), in a value or inside a file it carries."""
    found = []
    for key, value in (data or {}).items():
        if SECRET_KEY.search(key):
            found.append(f"{key}: named like a secret")
        for line in str(value).splitlines():
            if URI_WITH_PASSWORD.search(line):
                found.append(f"{key}: a URI with a password: {line.strip()}")
            elif HEX_DIGEST.search(line):
                found.append(f"{key}: a sha256-like value: {line.strip()}")
    return found


def test_the_development_keys_are_found_in_the_default_registry():
    assert dev_keys() >= {"homefeed-dev-key", "search-dev-key"}


@pytest.mark.parametrize("target", list(TARGETS))
def test_no_development_key_or_its_hash_reaches_the_cluster(target):
    rendered = yaml.safe_dump_all(render(target))
    assert not leaks(rendered), (target, leaks(rendered))


@pytest.mark.parametrize("values", HELM_VALUES, ids=lambda p: p.name)
def test_no_development_key_in_the_helm_values(values):
    assert not leaks(values.read_text()), (values.name, leaks(values.read_text()))


@pytest.mark.parametrize("target", list(TARGETS))
def test_no_configmap_holds_a_secret_looking_value(target):
    for d in render(target):
        if d["kind"] == "ConfigMap":
            assert not secret_looking(d.get("data")), (target, d["metadata"]["name"], secret_looking(d.get("data")))


def test_the_checks_catch_what_the_manifests_used_to_ship():
    """The registry ConfigMap once carried the default registry verbatim (the tenants' dev key
    hashes); a catalog URI with its password is as bad in a ConfigMap."""
    assert leaks(DEFAULT_REGISTRY.read_text()) == ["sha256('homefeed-dev-key')", "sha256('search-dev-key')",
                                                   "the development key 'admin-dev-key'",
                                                   "the development key 'homefeed-dev-key'",
                                                   "the development key 'search-dev-key'"]
    assert secret_looking({"registry.toml": DEFAULT_REGISTRY.read_text()})
    assert secret_looking({"USERSIGNALS_LAKE_CATALOG_URI": "postgresql+psycopg2://lake:pw@db.x.svc:5432/iceberg"})
    assert secret_looking({"AIRFLOW__CORE__FERNET_KEY": "x"}) and not secret_looking({"AWS_REGION": "eu-west-1"})
