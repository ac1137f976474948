"""The shipped Trino configuration loads: well-formed properties with the keys Trino requires;
the local Trino (infra/trino.py) runs with the files in infra/trino/local/, rendered from the settings."""
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
    coordinator = load_properties(TRINO / "coordinator" / "config.properties")
    # every node, the coordinator too, finds the coordinator at the port it serves on
    assert config["discovery.uri"] == f"http://trino-coordinator:{coordinator['http-server.http.port']}"
    node = load_properties(TRINO / role / "node.properties")
    assert {"node.environment", "node.id", "node.data-dir"} <= set(node)
    jvm = (TRINO / role / "jvm.config").read_text().split()
    assert any(opt.startswith("-Xmx") for opt in jvm) and "-XX:+ExitOnOutOfMemoryError" in jvm


def test_iceberg_catalog_is_the_platform_jdbc_catalog():
    # The JDBC catalog on PostgreSQL that the job, Spark and pyiceberg write (infra/k8s/lake-catalog.yaml)
    props = load_properties(TRINO / "coordinator" / "catalog" / "lake.properties")
    assert props["connector.name"] == "iceberg"
    assert props["iceberg.catalog.type"] == "jdbc"
    assert props["iceberg.jdbc-catalog.catalog-name"] == "lake"  # the name Spark and pyiceberg use
    assert props["iceberg.jdbc-catalog.driver-class"] == "org.postgresql.Driver"
    assert props["iceberg.jdbc-catalog.default-warehouse-dir"] == "${ENV:USERSIGNALS_LAKE_WAREHOUSE}"
    assert props["iceberg.security"] == "read_only"


def test_workers_see_the_same_catalog():
    assert (TRINO / "worker" / "catalog" / "lake.properties").read_text() == \
        (TRINO / "coordinator" / "catalog" / "lake.properties").read_text()


# --- the local Trino: the configuration infra/trino.py renders from infra/trino/local/ and runs -----
LOCAL = TRINO / "local"


@pytest.fixture
def local_settings(tmp_path):
    from usersignals.settings import Settings

    return Settings(data_dir=tmp_path, trino_port=18123, bind_host="127.0.0.1",
                    lake_catalog_uri="postgresql+psycopg2://usersignals:s%40cret@127.0.0.1:15433/lake_x")


def test_local_templates_are_what_render_config_reads():
    from infra import trino

    assert trino.TEMPLATES == LOCAL
    files = {p.relative_to(LOCAL).as_posix() for p in LOCAL.rglob("*") if p.is_file()}
    assert files == {"config.properties", "node.properties", "jvm.config", "log.properties", "catalog/lake.properties"}


def test_local_config_one_node_that_schedules_on_itself(local_settings):
    from infra import trino

    etc = trino.render_config(local_settings)
    assert etc == local_settings.data_dir / "trino" / "etc"
    for path in etc.rglob("*"):
        if path.is_file():
            assert "{{" not in path.read_text(), f"{path}: a template field was not filled in"
    config = load_properties(etc / "config.properties")
    assert config["coordinator"] == "true" and config["node-scheduler.include-coordinator"] == "true"
    assert config["http-server.http.port"] == "18123"
    assert config["discovery.uri"] == "http://127.0.0.1:18123"
    node = load_properties(etc / "node.properties")
    assert node["node.data-dir"] == str(local_settings.data_dir / "trino" / "data")
    assert node["node.bind-ip"] == node["node.internal-address"] == "127.0.0.1"
    assert {"node.environment", "node.id"} <= set(node)


def _gb(size: str) -> float:
    units = {"G": 1, "GB": 1, "M": 1 / 1024, "MB": 1 / 1024}
    number = size.rstrip("GMB")
    return float(number) * units[size[len(number):]]


def test_local_heap_fits_this_machine_and_the_query_memory_fits_the_heap(local_settings):
    from infra import trino

    etc = trino.render_config(local_settings)
    jvm = (etc / "jvm.config").read_text().split()
    heap = _gb(next(o for o in jvm if o.startswith("-Xmx"))[4:])
    assert 2 <= heap <= 8  # a 2-core, 24 GB machine that also runs Kafka, Flink, Redis, Spark
    assert "-XX:+ExitOnOutOfMemoryError" in jvm
    config = load_properties(etc / "config.properties")
    per_node = _gb(config["query.max-memory-per-node"])
    assert per_node + 0.3 * heap <= heap  # Trino's default heap headroom is 30 %
    assert _gb(config["query.max-memory"]) <= per_node  # one node holds all of a query


def test_local_catalog_is_the_lakes_jdbc_catalog(local_settings):
    from infra import trino
    from usersignals import lake

    for settings in (local_settings, local_settings.with_overrides(lake_catalog="analysts")):
        etc = trino.render_config(settings)
        path = etc / "catalog" / f"{settings.lake_catalog}.properties"
        assert [p.name for p in (etc / "catalog").iterdir()] == [path.name]  # catalog name = file name
        assert path.stat().st_mode & 0o077 == 0  # it holds the catalog database's password
        props = load_properties(path)
        j = lake.jdbc(settings)
        assert props["connector.name"] == "iceberg" and props["iceberg.catalog.type"] == "jdbc"
        # pyiceberg, Spark and Flink store the catalog's name in every row: Trino must use the same.
        assert props["iceberg.jdbc-catalog.catalog-name"] == settings.lake_catalog
        assert (props["iceberg.jdbc-catalog.connection-url"], props["iceberg.jdbc-catalog.connection-user"],
                props["iceberg.jdbc-catalog.connection-password"]) == (j.url, j.user, j.password)
        assert j.url == "jdbc:postgresql://127.0.0.1:15433/lake_x" and j.password == "s@cret"
        assert props["iceberg.jdbc-catalog.default-warehouse-dir"] == settings.warehouse
        assert settings.warehouse.startswith("file://")
        # file:///… locations (what the writers record) through Trino's native local file system
        assert props["fs.native-local.enabled"] == "true" and props["local.location"] == "/"
        assert "fs.hadoop.enabled" not in props  # needs plugin/iceberg/hdfs, not in Maven Central's zip
        assert props["iceberg.security"] == "read_only"


def test_local_server_command(local_settings, monkeypatch):
    from infra import trino

    monkeypatch.setattr(trino, "ensure_unpacked", lambda: trino.install_dir())
    monkeypatch.setattr(trino, "java_home", lambda settings: trino.Path("/jdk"))
    argv = trino.argv(local_settings)
    assert argv[:2] == [str(trino.install_dir() / "bin" / "launcher"), "run"]  # foreground: SIGTERM stops it
    assert f"--etc-dir={local_settings.data_dir / 'trino' / 'etc'}" in argv and "--jvm-dir=/jdk" in argv
    cli = trino.cli_argv(local_settings)
    assert cli[0] == "/jdk/bin/java" and cli[cli.index("-jar") + 1] == str(trino.CLI_JAR)
    assert cli[cli.index("--server") + 1] == "http://127.0.0.1:18123"
    assert cli[cli.index("--catalog") + 1] == "lake" and cli[cli.index("--schema") + 1] == "usersignals"


def test_local_filesystem_by_warehouse_scheme():
    from infra import trino

    assert trino.filesystem_properties("s3://bucket/warehouse") == ["fs.native-s3.enabled=true"]
    with pytest.raises(ValueError):
        trino.filesystem_properties("hdfs://nn/warehouse")
