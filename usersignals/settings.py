"""Runtime settings, read once from the environment (prefix ``USERSIGNALS_``).

Every part of the platform (streaming job, serving API, local stack, benchmarks)
takes its addresses and limits from here, so one variable moves them all.
"""
from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

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


@dataclass(frozen=True)
class Settings:
    broker_port: int = 9092
    kv_port: int = 6379
    api_port: int = 8000
    # Worker processes of the serving API on its one port (``python -m serving``); 1: a single
    # process. Each tenant's max_concurrency and max_rps are divided among them (serving/limits.py).
    api_workers: int = os.cpu_count() or 1
    job_metrics_port: int = 9250
    host: str = "127.0.0.1"
    data_dir: Path = REPO_ROOT / "var"
    registry_path: Path | None = None
    events_topic: str = "user_events"
    dlq_topic: str = "user_events_dlq"
    served_topic: str = "served_features"
    topic_partitions: int = 4
    # Apache Kafka (KRaft, one combined broker + controller locally): its controller listener and
    # the JMX exporter that publishes its metrics. The log lives in data_dir/kafka.
    controller_port: int = 9093
    broker_metrics_port: int = 9254
    # Retention of the topics, per topic kind: time (hours) and size (MiB per partition), whichever
    # comes first. Events and their enriched copies are replayable for a week; the DLQ for a month.
    events_retention_hours: int = 168
    dlq_retention_hours: int = 720
    topic_retention_mb: int = 4096
    # PostgreSQL: Airflow's metadata database (a cluster of the stack's own in data_dir/postgres).
    postgres_port: int = 5433
    # Airflow's SQLAlchemy URL; empty: the "airflow" database of the stack's PostgreSQL.
    airflow_db_url: str = ""
    consumer_group: str = "usersignals-indexer"
    kv_prefix: str = "us"
    # Flink job tuning; the defaults favour latency (see README "Tuning").
    parallelism: int = 2
    checkpoint_interval_ms: int = 5000
    bundle_size: int = 1000
    bundle_time_ms: int = 10
    python_worker_mode: str = "process"
    source_fetch_wait_ms: int = 10      # the job's Kafka fetch wait: lower is fresher, higher is lighter
    # Lakehouse (Iceberg). Catalog type "sql": Iceberg's JDBC catalog in PostgreSQL, which every
    # engine (pyiceberg, Spark, Flink, DuckDB through pyiceberg, Trino) reads and writes; or "rest".
    # Empty URI: the "lake" database of the stack's PostgreSQL; empty warehouse: data_dir/lake.
    lake_catalog: str = "lake"
    lake_catalog_type: str = "sql"
    lake_catalog_uri: str = ""
    lake_warehouse: str = ""
    lake_namespace: str = "usersignals"
    enriched_topic: str = "user_events_enriched"
    # The indexing job's Iceberg sink commits on each checkpoint (checkpoint_interval_ms is the
    # lake's commit interval); it rolls a data file at this size. Each commit closes its files,
    # so small files come from short intervals: the daily maintenance compacts them.
    lake_target_file_mb: int = 128
    node_exporter_port: int = 9253    # serves the batch jobs' textfile metrics
    prometheus_port: int = 9090
    spark_master: str = "local[2]"
    # The Python that runs the batch jobs under spark-submit (driver and executors); spark-submit
    # is taken from its bin/. Empty: the main environment's (<repo>/.venv), else the running one.
    spark_python: str = ""
    # Analysts' SQL: a Trino server if a host is set, else the embedded engine (analytics/).
    trino_host: str = ""
    trino_port: int = 8081   # (Airflow has 8080)
    trino_user: str = "usersignals"

    @property
    def broker(self) -> str:
        return f"{self.host}:{self.broker_port}"

    @property
    def kv_url(self) -> str:
        return f"redis://{self.host}:{self.kv_port}/0"

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
        return replace(self, **kwargs)

    def to_env(self) -> dict[str, str]:
        """The ``USERSIGNALS_*`` variables that make ``load_settings()`` return these settings."""
        env = {_var(f.name): str(getattr(self, f.name)) for f in fields(self)}
        if self.registry_path is None:
            del env[_var("registry_path")]
        return env


# Every field is read from USERSIGNALS_<FIELD>, but for these names.
_VAR_NAMES = {"registry_path": "REGISTRY"}
_PATHS = {"data_dir", "registry_path"}
# Settings that must be at least this number.
_MINIMUMS = {"api_workers": 1}
# Settings that take one of a few words.
_CHOICES = {
    "python_worker_mode": ("process", "loopback"),
    "lake_catalog_type": ("sql", "rest"),
}


def _var(field_name: str) -> str:
    return "USERSIGNALS_" + _VAR_NAMES.get(field_name, field_name.upper())


def load_settings() -> Settings:
    """Settings from ``USERSIGNALS_*`` environment variables, defaulting to the local stack."""
    values = {}
    for f in fields(Settings):
        var = _var(f.name)
        raw = os.environ.get(var)
        if raw is None or (f.name == "registry_path" and not raw):
            continue
        if f.name in _PATHS:
            values[f.name] = Path(raw).resolve()
        elif isinstance(f.default, int):
            try:
                values[f.name] = int(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not an integer") from None
        else:
            values[f.name] = raw
    settings = Settings(**values)
    for name, least in _MINIMUMS.items():
        if getattr(settings, name) < least:
            raise ValueError(f"{_var(name)}={getattr(settings, name)}: must be at least {least}")
    for name, allowed in _CHOICES.items():
        value = getattr(settings, name)
        if value not in allowed:
            quoted = [repr(a) for a in allowed]
            raise ValueError(f"{_var(name)}={value!r}: expected {', '.join(quoted[:-1])} or {quoted[-1]}")
    return settings
