"""The shipped Trino configuration loads: well-formed properties with the keys Trino requires."""
import pytest

from usersignals.settings import REPO_ROOT

TRINO = REPO_ROOT / "infra" / "trino"


def load_properties(path):
    props = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert "=" in line, f"{path}:{n}: not key=value: {line!r}"
        key, value = line.split("=", 1)
        assert key.strip() not in props, f"{path}:{n}: duplicate key {key}"
        props[key.strip()] = value.strip()
    return props


@pytest.mark.parametrize("role", ["coordinator", "worker"])
def test_node_configs(role):
    config = load_properties(TRINO / role / "config.properties")
    assert config["coordinator"] == ("true" if role == "coordinator" else "false")
    assert config["discovery.uri"].startswith("http://") and int(config["http-server.http.port"]) > 0
    node = load_properties(TRINO / role / "node.properties")
    assert {"node.environment", "node.id", "node.data-dir"} <= set(node)
    jvm = (TRINO / role / "jvm.config").read_text().split()
    assert any(opt.startswith("-Xmx") for opt in jvm) and "-XX:+ExitOnOutOfMemoryError" in jvm


@pytest.mark.parametrize("name", ["lake.properties", "lake-jdbc.properties.example"])
def test_iceberg_catalog_points_at_the_platform_catalog(name):
    props = load_properties(TRINO / "coordinator" / "catalog" / name)
    assert props["connector.name"] == "iceberg"
    kind = props["iceberg.catalog.type"]
    assert kind in ("rest", "jdbc")
    if kind == "rest":
        assert props["iceberg.rest-catalog.uri"] == "${ENV:USERSIGNALS_LAKE_CATALOG_URI}"
    else:
        assert props["iceberg.jdbc-catalog.catalog-name"] == "lake"  # the name Spark and pyiceberg use
        assert "iceberg.jdbc-catalog.connection-url" in props
    assert props["iceberg.security"] == "read_only"


def test_workers_see_the_same_catalog():
    assert (TRINO / "worker" / "catalog" / "lake.properties").read_text() == \
        (TRINO / "coordinator" / "catalog" / "lake.properties").read_text()
