"""The lakehouse contract: table names, and how every engine reaches the one Iceberg catalog.

One catalog serves every engine: Iceberg's JDBC catalog, whose two tables live in a PostgreSQL
database (locally the ``lake`` database of the stack's PostgreSQL; a file warehouse under
``data_dir/lake``). pyiceberg reaches it through SQLAlchemy (``load_catalog``; the embedded
analytics engine reads through it too), Spark through ``spark_conf``, the Flink job through
``flink_catalog_options``, Trino through ``jdbc`` (``infra/trino.py`` renders its catalog file):
all from the same settings, so a table one engine commits is the table the others read. Production sets
``USERSIGNALS_LAKE_CATALOG_URI`` / ``_WAREHOUSE`` (PostgreSQL, object storage), or
``USERSIGNALS_LAKE_CATALOG_TYPE=rest`` for an Iceberg REST catalog. Table definitions live
in ``iceberg_schemas``.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import unquote, urlsplit

from usersignals.settings import Settings, jars

log = logging.getLogger(__name__)
T = TypeVar("T")

# Table names (within the settings' namespace) are a public contract: analysts' queries use them.
RAW_EVENTS = "raw_events"
ENRICHED_EVENTS = "enriched_events"
ITEM_FEATURES = "item_features"
DEAD_LETTERS = "dead_letters"
SERVED_FEATURES = "served_features"
ITEM_EMBEDDINGS = "item_embeddings"        # model outputs (retraining), read by enrichment
USER_EMBEDDINGS = "user_embeddings"        # model outputs (retraining)
MODEL_RUNS = "model_runs"                  # every training run: params, metrics, gate decision
SELECTED_SEQUENCES = "selected_sequences"  # event-selection experiments
FEATURE_SKEW = "feature_skew"              # online/offline skew per tenant, dataset and feature
SELECTION_REPORTS = "selection_reports"    # event-selection rules compared: recall/NDCG per rule


# Columns of enriched_events that are not item features; every other column is one.
ENRICHED_BASE_COLUMNS = frozenset({"event_id", "user_id", "event_type", "item_id", "event_time", "surface",
                                   "dwell_ms", "query", "dataset", "indexed_at", "enriched_by"})


def feature_columns(enriched_columns) -> tuple[str, ...]:
    """The item-feature columns of enriched_events, given its column names (in table order)."""
    return tuple(c for c in enriched_columns if c not in ENRICHED_BASE_COLUMNS)


def table_id(settings: Settings, name: str) -> str:
    return f"{settings.lake_namespace}.{name}"


def catalog_properties(settings: Settings) -> dict[str, str]:
    """pyiceberg ``load_catalog`` properties of the configured catalog."""
    props = {"type": settings.lake_catalog_type, "uri": settings.catalog_uri, "warehouse": settings.warehouse}
    if settings.lake_catalog_type == "sql":
        props["init_catalog_tables"] = "true"
    return props


def local_paths(settings: Settings) -> None:
    """Create the local warehouse directory (no-op for object storage)."""
    if settings.warehouse.startswith("file://"):
        Path(settings.warehouse[len("file://"):]).mkdir(parents=True, exist_ok=True)


def load_catalog(settings: Settings):
    from pyiceberg.catalog import load_catalog as _load

    local_paths(settings)
    return _load(settings.lake_catalog, **catalog_properties(settings))


@dataclass(frozen=True)
class Jdbc:
    """The catalog database as the JVM engines' JDBC drivers take it: URL, user and password apart."""
    url: str
    user: str
    password: str


def jdbc(settings: Settings) -> Jdbc:
    """JDBC form of the SQL catalog's SQLAlchemy URI (``postgresql[+driver]://user:pw@host:port/db``)."""
    uri = settings.catalog_uri
    parts = urlsplit(uri)
    if not parts.scheme.startswith("postgresql"):
        raise ValueError(f"catalog URI {uri.split('@')[-1]!r}: the JVM engines need a PostgreSQL catalog "
                         "(postgresql://user:password@host:port/database)")
    port = f":{parts.port}" if parts.port else ""
    return Jdbc(f"jdbc:postgresql://{parts.hostname}{port}{parts.path}", unquote(parts.username or ""),
                unquote(parts.password or ""))


def _iceberg_jdbc_options(settings: Settings) -> dict[str, str]:
    """Iceberg JdbcCatalog properties shared by Spark and Flink."""
    j = jdbc(settings)
    return {
        "uri": j.url, "jdbc.user": j.user, "jdbc.password": j.password, "warehouse": settings.warehouse,
        # pyiceberg (`python -m iceberg_schemas`) creates the catalog's tables, in the schema all
        # engines share; the JVM engines only use them.
        "jdbc.init-catalog-tables": "false",
        "jdbc.schema-version": "V1",
        **_file_io(settings),
    }


def _file_io(settings: Settings) -> dict[str, str]:
    """An s3:// warehouse is read and written through Iceberg's S3FileIO (iceberg-aws-bundle, in the
    spark and flink profiles of infra/pom.xml): the JVM engines have no Hadoop S3 filesystem."""
    return {"io-impl": "org.apache.iceberg.aws.s3.S3FileIO"} if settings.warehouse.startswith("s3://") else {}


def flink_catalog_options(settings: Settings) -> dict[str, str]:
    """``CREATE CATALOG ... WITH (...)`` options of the lake for Flink's Iceberg connector."""
    if settings.lake_catalog_type == "rest":
        return {"type": "iceberg", "catalog-type": "rest", "uri": settings.catalog_uri,
                "warehouse": settings.warehouse, **_file_io(settings)}
    return {"type": "iceberg", "catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
            **_iceberg_jdbc_options(settings)}


def spark_jars() -> list[Path]:
    """The jars Spark needs for the catalog: the Iceberg runtime and the JDBC drivers, which
    `make install` copies from Maven Central into build/jars/spark (infra/pom.xml), so Airflow's
    environment finds them too."""
    return jars("spark")


def spark_conf(settings: Settings) -> dict[str, str]:
    """Spark configuration that mounts the catalog as ``settings.lake_catalog`` (the default)."""
    cat = f"spark.sql.catalog.{settings.lake_catalog}"
    conf = {
        "spark.jars": ",".join(str(j) for j in spark_jars()),
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        cat: "org.apache.iceberg.spark.SparkCatalog",
        f"{cat}.warehouse": settings.warehouse,
        # pyiceberg commits while Spark runs: always read the newest metadata.
        f"{cat}.cache-enabled": "false",
        "spark.sql.defaultCatalog": settings.lake_catalog,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    if settings.lake_catalog_type == "sql":
        conf[f"{cat}.type"] = "jdbc"
        conf.update({f"{cat}.{k}": v for k, v in _iceberg_jdbc_options(settings).items()})
    else:
        conf.update({f"{cat}.type": "rest", f"{cat}.uri": settings.catalog_uri,
                     **{f"{cat}.{k}": v for k, v in _file_io(settings).items()}})
    return conf


def append_rows(catalog, ident: str, rows: list[dict], snapshot_properties: dict[str, str] | None = None) -> None:
    """Append Python rows (dicts by column name) to a table, in its own Arrow schema; one retried commit."""
    import pyarrow as pa

    def commit():
        table = catalog.load_table(ident)
        table.append(pa.Table.from_pylist(rows, schema=table.schema().as_arrow()),
                     snapshot_properties=snapshot_properties or {})

    with_retries(commit, f"append {ident}")


def with_retries(fn: Callable[[], T], what: str, attempts: int = 8, base_s: float = 0.2) -> T:
    """Run an Iceberg commit, retrying optimistic-concurrency conflicts (``CommitFailedException``) up to
    ``attempts`` times in all; any other error, or the last conflict, is raised as it is.

    ``fn`` must reload the table itself, so every attempt commits against fresh metadata.
    """
    # Imported here: the streaming environment imports this module for its table names but commits
    # through Flink, and has neither pyiceberg nor tenacity.
    from pyiceberg.exceptions import CommitFailedException
    from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

    def backoff(state: RetryCallState) -> float:
        # Doubling from base_s, times a factor in [0.5, 1.5): writers that conflicted do not retry in step.
        return base_s * 2 ** (state.attempt_number - 1) * (0.5 + random.random())

    def warn(state: RetryCallState) -> None:
        log.warning("%s: commit attempt %d failed (%s); retrying in %.2fs", what, state.attempt_number,
                    state.outcome.exception(), state.next_action.sleep)

    retrying = Retrying(retry=retry_if_exception_type(CommitFailedException), stop=stop_after_attempt(attempts),
                        wait=backoff, before_sleep=warn, reraise=True)
    return retrying(fn)
