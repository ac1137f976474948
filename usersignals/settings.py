"""Runtime settings, read once from the environment (prefix ``USERSIGNALS_``).

Every part of the platform (streaming job, serving API, trimmer, batch jobs, local stack,
benchmarks) takes its addresses and limits from here, so one variable moves them all. Servers
listen on ``bind_host``; peers are reached at their own addresses (``broker_bootstrap``,
``kv_url``), which default to the local stack and must be set in a deployment, where
``bind_host`` is ``0.0.0.0`` and every peer is another service.
"""
from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parent.parent
# The main environment's Python: the API, trimmer, generator, batch jobs.
MAIN_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
# JVM jars from Maven Central, one folder per profile of infra/pom.xml (kafka, flink, spark).
JARS_DIR = REPO_ROOT / "build" / "jars"


def jars(group: str) -> list[Path]:
    """The jars `make install` copied for one profile of infra/pom.xml, sorted."""
    found = sorted((JARS_DIR / group).glob("*.jar"))
    if not found:
        raise FileNotFoundError(f"no jars in {JARS_DIR / group}; run `make install`")
    return found


POSTGRES_USER = "usersignals"
LAKE_DATABASE = "lake"      # the Iceberg catalog's database on the stack's PostgreSQL
# Addresses that mean "every interface" to a server and nothing useful to a client.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def setting(default=None, help: str = "", *, factory=None, secret: bool = False):
    """A field of Settings with its one-line description (``metadata["help"]``), from which
    docs/reference/configuration.md is generated. ``secret``: left out of repr."""
    if not help:
        raise ValueError("every setting needs a one-line help")
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help}, repr=not secret)
    return field(default=default, metadata={"help": help}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    # --- where servers listen, where peers are -------------------------------------------------
    bind_host: str = setting("127.0.0.1", "Address every server of this process listens on (0.0.0.0 in a pod).")
    broker_bootstrap: str = setting(
        "", "Kafka bootstrap servers clients connect to (host:port,...); empty: the local stack's "
            "broker at bind_host:broker_port.")
    kv_url: str = setting(
        "", "URL of the KV store (redis://[user:password@]host:port/db); empty: the local stack's "
            "redis://bind_host:kv_port/0. With kv_cluster, any node of the cluster.")
    kv_cluster: bool = setting(False, "The KV store is a Redis Cluster (true/false): clients route each key by slot.")
    # --- ports of the local stack's servers -----------------------------------------------------
    broker_port: int = setting(9092, "Kafka broker port of the local stack (its client listener).")
    kv_port: int = setting(6379, "Port of the local stack's redis-server.")
    api_port: int = setting(8000, "Port the serving API listens on.")
    # A production Service then exposes api_port only: tenants cannot even reach the admin routes.
    api_admin_port: int = setting(
        0, "Port of the serving API's admin routes (tenant changes, reload, erasure), which api_port then "
           "does not serve; 0: every route on api_port.")
    api_admin_host: str = setting("", "Address the admin port listens on (e.g. 127.0.0.1 in a pod: reached "
                                      "by kubectl port-forward only); empty: bind_host.")
    # Each tenant's max_concurrency and max_rps are divided among the workers (serving/limits.py).
    api_workers: int = setting(
        help="Worker processes of the serving API on its one port (python -m serving); default: the cores.",
        factory=lambda: os.cpu_count() or 1)
    job_metrics_port: int = setting(9250, "Port of the indexing job's Prometheus metrics.")
    trimmer_metrics_port: int = setting(9251, "Port of the trimmer's Prometheus metrics.")
    trim_interval_s: float = setting(1.0, "Seconds the trimmer sleeps when no key is waiting to be trimmed.")
    airflow_port: int = setting(8080, "Port of Airflow's API server and UI (python -m infra.airflow); "
                                      "its log servers take the next two.")
    # Apache Kafka (KRaft, one combined broker + controller locally). The log lives in data_dir/kafka.
    controller_port: int = setting(9093, "Kafka controller port of the local stack (KRaft).")
    broker_metrics_port: int = setting(9254, "Port of the JMX exporter publishing the local broker's metrics.")
    postgres_port: int = setting(5433, "Port of the local stack's PostgreSQL (Airflow's metadata, the lake's catalog).")
    node_exporter_port: int = setting(9253, "Port of the node exporter serving the batch jobs' textfile metrics.")
    prometheus_port: int = setting(9090, "Port of the local stack's Prometheus.")
    # --- state on disk ----------------------------------------------------------------------------
    data_dir: Path = setting(REPO_ROOT / "var", "Directory of the local stack's state: logs, KV, broker log, lake.")
    checkpoint_dir: str = setting(
        "", "Where the indexing job keeps its checkpoints (a Flink file system URI: file://, s3://); "
            "empty: file://<data_dir>/checkpoints.")
    savepoint_dir: str = setting(
        "", "Where the indexing job's savepoints go (a Flink file system URI); empty: file://<data_dir>/savepoints.")
    registry_path: Path | None = setting(
        None, "The registry of event types, datasets, enrichments and tenants (TOML); "
              "empty: usersignals/default_registry.toml.")
    admin_key: str = setting(
        "admin-dev-key", "The serving API's admin key (X-Admin-Key): reads every tenant and changes them. "
                         "The default is for the local stack only.", secret=True)
    read_key: str = setting(
        "", "The serving API's read-only key (X-Read-Key): reads any user's raw events "
            "(GET /v1/users/{id}/events), nothing else; empty: none, tenant and admin keys only.", secret=True)
    # --- topics -----------------------------------------------------------------------------------
    events_topic: str = setting("user_events", "Kafka topic of incoming user events.")
    dlq_topic: str = setting("user_events_dlq", "Kafka topic of rejected events (dead letters).")
    served_topic: str = setting("served_features", "Kafka topic of the features the API served (feature log).")
    enriched_topic: str = setting("user_events_enriched", "Kafka topic of indexed events, enriched.")
    topic_partitions: int = setting(4, "Partitions of the platform's topics when the stack creates them.")
    # Events and their enriched copies are replayable for a week; the DLQ for a month.
    events_retention_hours: int = setting(168, "Retention (hours) of the events and enriched topics.")
    dlq_retention_hours: int = setting(720, "Retention (hours) of the dead-letter topic.")
    topic_retention_mb: int = setting(4096, "Retention (MiB per partition) of every topic, whichever comes first.")
    # --- Airflow ----------------------------------------------------------------------------------
    airflow_db_url: str = setting("", "Airflow's SQLAlchemy URL; empty: the 'airflow' database of the stack's PostgreSQL.")
    # --- the indexing job (Flink); the defaults favour latency (docs/operations/tuning.md) ---------------
    consumer_group: str = setting("usersignals-indexer", "Kafka consumer group of the indexing job.")
    kv_prefix: str = setting("us", "Prefix of every KV key.")
    parallelism: int = setting(2, "Parallelism of the indexing job (at most the events topic's partitions).")
    checkpoint_interval_ms: int = setting(
        5000, "Checkpoint interval of the indexing job (ms); also the lake's commit interval.")
    bundle_size: int = setting(1000, "Records a Python worker bundle holds at most (python.fn-execution.bundle.size).")
    bundle_time_ms: int = setting(10, "Milliseconds a Python worker bundle waits at most (python.fn-execution.bundle.time).")
    python_worker_mode: str = setting("process", "Where the job's Python functions run: process or loopback.")
    source_fetch_wait_ms: int = setting(10, "The job's Kafka fetch wait (ms): lower is fresher, higher is lighter.")
    # --- the lake (Iceberg) -----------------------------------------------------------------------
    # Catalog "sql": Iceberg's JDBC catalog in PostgreSQL, which every engine reads and writes.
    lake_catalog: str = setting("lake", "Name of the lake's Iceberg catalog in every engine.")
    lake_catalog_type: str = setting("sql", "Iceberg catalog type: sql (JDBC, PostgreSQL) or rest.")
    lake_catalog_uri: str = setting("", "The catalog's URI; empty: the 'lake' database of the stack's PostgreSQL.")
    lake_warehouse: str = setting("", "The lake's warehouse location; empty: file://<data_dir>/lake/warehouse.")
    lake_namespace: str = setting("usersignals", "Iceberg namespace of the lake's tables.")
    # Each commit closes its files, so small files come from short intervals: the daily
    # maintenance compacts them.
    lake_target_file_mb: int = setting(128, "Size (MiB) at which the job's Iceberg sink rolls a data file.")
    # --- batch and analytics ------------------------------------------------------------------------
    spark_master: str = setting("local[2]", "Spark master of the batch jobs (local[N], k8s://...).")
    # A repair DAG unpaused for the first time would otherwise replay every day since its start date.
    catchup_days: int = setting(14, "How many days back a per-day repair DAG's missed scheduled runs still run "
                                    "(older ones skip their tasks: backfill them from the UI).")
    spark_python: str = setting(
        "", "The Python that runs the batch jobs under spark-submit (spark-submit from its bin/); "
            "empty: <repo>/.venv's, else the running one.")
    trino_host: str = setting("", "Trino server of the analysts' SQL; empty: the local one if it answers, "
                                  "else the embedded engine.")
    trino_port: int = setting(8081, "Trino's port (Airflow has 8080).")
    trino_user: str = setting("usersignals", "User name the analytics client gives Trino.")
    trino_java_home: str = setting("", "The JDK that runs the local Trino server (Java 24+); empty: the newest "
                                       "such JDK in /usr/lib/jvm (Temurin preferred).")

    def __post_init__(self):
        # Empty peer addresses and directories follow the local stack (bind_host, ports, data_dir),
        # filled in here and re-derived by with_overrides when what they follow changes.
        derived = frozenset(name for name in _DERIVED if not getattr(self, name))
        for name in derived:
            object.__setattr__(self, name, _DERIVED[name](self))
        object.__setattr__(self, "_derived", derived)

    @property
    def host(self) -> str:
        """The local stack's own address: where its servers listen and its processes reach
        each other (``bind_host``; 127.0.0.1 when that is a wildcard)."""
        return _local(self.bind_host)

    @property
    def broker(self) -> str:
        """Kafka bootstrap servers (``broker_bootstrap``)."""
        return self.broker_bootstrap

    @property
    def postgres_password(self) -> str:
        """The stack's PostgreSQL password: generated once, kept in data_dir/postgres.password (0600)."""
        path = self.data_dir / "postgres.password"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def postgres_url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL of a database on the stack's PostgreSQL (user ``usersignals``)."""
        return f"{driver}://{POSTGRES_USER}:{self.postgres_password}@{self.host}:{self.postgres_port}/{database}"

    @property
    def catalog_uri(self) -> str:
        return self.lake_catalog_uri or self.postgres_url(LAKE_DATABASE)

    @property
    def warehouse(self) -> str:
        return self.lake_warehouse or f"file://{self.data_dir / 'lake' / 'warehouse'}"

    @property
    def batch_python(self) -> str:
        """``spark_python``, or its default: Airflow's tasks run in another environment than Spark's."""
        if self.spark_python:
            return self.spark_python
        return str(MAIN_PYTHON) if MAIN_PYTHON.exists() else sys.executable

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def with_overrides(self, **kwargs) -> "Settings":
        # A derived setting not overridden is derived again (a new kv_port moves the default kv_url).
        again = {name: "" for name in self._derived if name not in kwargs}
        return replace(self, **again, **kwargs)

    def to_env(self) -> dict[str, str]:
        """The ``USERSIGNALS_*`` variables that make ``load_settings()`` return these settings.
        A derived setting is passed empty, so the child derives it the same way (and no value
        inherited from the parent's environment takes its place)."""
        env = {_var(f.name): "" if f.name in self._derived else _format(getattr(self, f.name))
               for f in fields(self)}
        if self.registry_path is None:
            del env[_var("registry_path")]
        return env


def _local(host: str) -> str:
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


# Settings whose empty value means "the local stack's": how each is derived.
_DERIVED = {
    "broker_bootstrap": lambda s: f"{_local(s.bind_host)}:{s.broker_port}",
    "kv_url": lambda s: f"redis://{_local(s.bind_host)}:{s.kv_port}/0",
    "checkpoint_dir": lambda s: f"file://{s.data_dir / 'checkpoints'}",
    "savepoint_dir": lambda s: f"file://{s.data_dir / 'savepoints'}",
}
# Every field is read from USERSIGNALS_<FIELD>, but for these names.
_VAR_NAMES = {"registry_path": "REGISTRY"}
# Settings that must be at least this number.
_MINIMUMS = {"api_workers": 1, "trim_interval_s": 0.001, "catchup_days": 1}
# Settings that take one of a few words.
_CHOICES = {
    "python_worker_mode": ("process", "loopback"),
    "lake_catalog_type": ("sql", "rest"),
}
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def _var(field_name: str) -> str:
    return "USERSIGNALS_" + _VAR_NAMES.get(field_name, field_name.upper())


def _format(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse(f, var: str, raw: str):
    """A variable's text as the field's type (annotations are strings: ``from __future__``)."""
    kind = f.type
    if kind in ("Path", "Path | None"):
        return Path(raw).resolve()
    if kind == "bool":
        try:
            return _BOOLEANS[raw.strip().lower()]
        except KeyError:
            raise ValueError(f"{var}={raw!r}: expected true or false (or 1 / 0)") from None
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{var}={raw!r} is not an integer") from None
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{var}={raw!r} is not a number") from None
    if kind == "str":
        return raw
    raise TypeError(f"setting {f.name} has a type load_settings cannot read: {kind}")


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Settings from ``USERSIGNALS_*`` variables (``environ``, else the process's), defaulting
    to the local stack."""
    environ = os.environ if environ is None else environ
    if "USERSIGNALS_HOST" in environ:  # was both the bind address and every peer's: say what replaced it
        raise ValueError(f"USERSIGNALS_HOST={environ['USERSIGNALS_HOST']!r} is no longer read: set "
                         "USERSIGNALS_BIND_HOST (where servers listen), USERSIGNALS_BROKER_BOOTSTRAP and "
                         "USERSIGNALS_KV_URL (where the broker and the KV store are)")
    values = {}
    for f in fields(Settings):
        var = _var(f.name)
        raw = environ.get(var)
        if raw is None or (f.name == "registry_path" and not raw):
            continue
        values[f.name] = _parse(f, var, raw)
    settings = Settings(**values)
    for name, least in _MINIMUMS.items():
        if getattr(settings, name) < least:
            raise ValueError(f"{_var(name)}={getattr(settings, name)}: must be at least {least}")
    for name, allowed in _CHOICES.items():
        value = getattr(settings, name)
        if value not in allowed:
            quoted = [repr(a) for a in allowed]
            raise ValueError(f"{_var(name)}={value!r}: expected {', '.join(quoted[:-1])} or {quoted[-1]}")
    if settings.kv_cluster and urlparse(settings.kv_url).path.strip("/") not in ("", "0"):
        raise ValueError(f"{_var('kv_url')}={settings.kv_url!r}: a Redis Cluster has database 0 only "
                         f"({_var('kv_cluster')}=true)")
    return settings
