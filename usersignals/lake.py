"""The lakehouse contract: table names, and how every engine reaches the one Iceberg catalog.

The lake sink and tests use pyiceberg (``load_catalog``); Spark jobs and the DAGs use
``spark_conf``; analytics engines use ``catalog_properties``. All read the same catalog,
so a table written by one is read by the others. Locally the catalog is a SQLite-backed
SQL catalog over a file warehouse under ``data_dir/lake``; in production set
``USERSIGNALS_LAKE_CATALOG_TYPE`` / ``_URI`` / ``_WAREHOUSE`` (a PostgreSQL SQL catalog
or a REST catalog on object storage). Table definitions live in ``iceberg_schemas``.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Callable, TypeVar

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
    """Create the local warehouse and catalog directories (no-op for remote catalogs)."""
    for uri in (settings.catalog_uri, settings.warehouse):
        for scheme in ("sqlite:///", "file://"):
            if uri.startswith(scheme):
                target = Path(uri[len(scheme):])
                (target.parent if scheme == "sqlite:///" else target).mkdir(parents=True, exist_ok=True)


def load_catalog(settings: Settings):
    from pyiceberg.catalog import load_catalog as _load

    local_paths(settings)
    return _load(settings.lake_catalog, **catalog_properties(settings))


def _jdbc_uri(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return "jdbc:sqlite:" + uri[len("sqlite:///") - 1:]
    if uri.startswith(("postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://")):
        return "jdbc:postgresql://" + uri.split("://", 1)[1]
    if uri.startswith("jdbc:"):
        return uri
    raise ValueError(f"cannot map catalog URI {uri!r} to JDBC; use sqlite:/// or postgresql://")


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
        conf.update({
            f"{cat}.type": "jdbc",
            f"{cat}.uri": _jdbc_uri(settings.catalog_uri),
            # pyiceberg creates the catalog tables; if Iceberg's JDBC catalog does, it keeps a
            # read lock on the SQLite file for the JVM's life and pyiceberg commits fail.
            f"{cat}.jdbc.init-catalog-tables": "false",
            f"{cat}.jdbc.schema-version": "V1",
        })
    else:
        conf.update({f"{cat}.type": "rest", f"{cat}.uri": settings.catalog_uri})
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
    """Run an Iceberg commit, retrying optimistic-concurrency conflicts and a locked catalog.

    ``fn`` must reload the table itself, so every attempt commits against fresh metadata.
    """
    from pyiceberg.exceptions import CommitFailedException

    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # CommitFailedException, or sqlite "database is locked"
            retryable = isinstance(exc, CommitFailedException) or "locked" in str(exc).lower()
            if not retryable or attempt == attempts:
                raise
            delay = base_s * 2 ** (attempt - 1) * (0.5 + random.random())
            log.warning("%s: commit attempt %d failed (%s); retrying in %.2fs", what, attempt, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
