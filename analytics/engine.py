"""Where analysts' SQL runs: a Trino server when one is configured, else the embedded engine.

Both take Trino-dialect SQL that names tables without catalog or schema.

* ``TrinoEngine``: the ``trino`` client, catalog ``settings.lake_catalog``, schema
  ``settings.lake_namespace``, session time zone UTC (as the embedded engine). The server is
  ``USERSIGNALS_TRINO_HOST`` / ``_PORT``, or the local one (``make trino``, ``infra/trino.py``) at
  ``settings.host:settings.trino_port``, which ``engine_for`` detects with a quick ``/v1/info``.
* ``EmbeddedEngine``: sqlglot transpiles the SQL to DuckDB's dialect; DuckDB 1.5.5 reads the
  lake's current snapshots through its Iceberg extension (``iceberg_scan`` of each table's
  metadata file, which applies merge-on-read delete files), one view per table of the catalog's
  namespace (what Trino's schema shows: the audit table ``deletions``, model outputs, reports).
  The extensions come from PyPI wheels and are loaded by file path: nothing is downloaded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usersignals import lake
from usersignals.settings import Settings


@dataclass
class Result:
    columns: list[str]
    rows: list[tuple]
    engine: str
    seconds: float
    sql: str  # what the engine ran

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


def to_duckdb(trino_sql: str) -> str:
    import sqlglot

    return sqlglot.transpile(trino_sql, read="trino", write="duckdb")[0]


def _extension(package: str) -> Path:
    import importlib

    mod = importlib.import_module(package)
    found = sorted(Path(mod.__file__).parent.rglob("*.duckdb_extension"))
    if not found:
        raise FileNotFoundError(f"no .duckdb_extension file in {package}; run `make install`")
    return found[0]


class EmbeddedEngine:
    name = "embedded (DuckDB over Iceberg; SQL transpiled from Trino by sqlglot)"

    def __init__(self, settings: Settings, catalog=None, threads: int | None = None):
        import duckdb

        self.settings = settings
        self.catalog = catalog or lake.load_catalog(settings)
        self.con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
        for package in ("duckdb_extension_avro", "duckdb_extension_iceberg"):
            self.con.execute(f"LOAD '{_extension(package)}'")
        self.con.execute("SET TimeZone = 'UTC'")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.name = f"embedded DuckDB {duckdb.__version__} over Iceberg (SQL transpiled from Trino by sqlglot)"
        self.refresh()

    def tables(self) -> list[str]:
        """The tables of the lake's namespace, as the catalog lists them now (none before the
        first migration): every one, not a fixed list, so a table added to ``iceberg_schemas``
        is queryable here as it is on Trino."""
        from pyiceberg.exceptions import NoSuchNamespaceError

        try:
            return sorted(ident[-1] for ident in self.catalog.list_tables(self.settings.lake_namespace))
        except NoSuchNamespaceError:
            return []

    def refresh(self) -> None:
        """Point a view per table at its current snapshot (call again to see newer commits and tables)."""
        from pyiceberg.exceptions import NoSuchTableError

        for t in self.tables():
            try:
                table = self.catalog.load_table(lake.table_id(self.settings, t))
            except NoSuchTableError:  # dropped since it was listed
                continue
            location = table.metadata_location.replace("file://", "", 1)
            if table.current_snapshot() is None:  # no data yet: an empty view with the table's columns
                cols = ", ".join(f'CAST(NULL AS {_duck_type(f.field_type)}) AS "{f.name}"'
                                 for f in table.schema().fields)
                self.con.execute(f'CREATE OR REPLACE VIEW "{t}" AS SELECT {cols} WHERE false')
            else:
                self.con.execute(f"CREATE OR REPLACE VIEW \"{t}\" AS SELECT * FROM iceberg_scan('{location}')")

    def run(self, trino_sql: str) -> Result:
        sql = to_duckdb(trino_sql)
        started = time.perf_counter()
        cur = self.con.execute(sql)
        rows = cur.fetchall()
        columns = [d[0] for d in cur.description]
        return Result(columns, rows, self.name, time.perf_counter() - started, sql)

    def close(self) -> None:
        self.con.close()


def _duck_type(t) -> str:
    from pyiceberg import types as it

    return {it.StringType: "VARCHAR", it.LongType: "BIGINT", it.IntegerType: "INTEGER", it.DoubleType: "DOUBLE",
            it.FloatType: "FLOAT", it.BooleanType: "BOOLEAN", it.TimestamptzType: "TIMESTAMPTZ",
            it.TimestampType: "TIMESTAMP", it.DateType: "DATE", it.BinaryType: "BLOB"}.get(type(t), "VARCHAR") \
        if not isinstance(t, it.ListType) else f"{_duck_type(t.element_type)}[]"


class TrinoEngine:
    def __init__(self, settings: Settings, host: str | None = None):
        import trino

        self.settings = settings
        host = host or settings.trino_host or settings.host
        self.conn = trino.dbapi.connect(host=host, port=settings.trino_port, user=settings.trino_user,
                                        catalog=settings.lake_catalog, schema=settings.lake_namespace,
                                        timezone="UTC", http_scheme="https" if settings.trino_port == 443 else "http")
        self.name = f"Trino at {host}:{settings.trino_port}"
        try:  # the server's version, for the name only: a server that is not there fails in run()
            cur = self.conn.cursor()
            cur.execute("SELECT node_version FROM system.runtime.nodes WHERE coordinator LIMIT 1")
            version = cur.fetchall()[0][0]
            self.name = f"Trino {version} at {host}:{settings.trino_port}"
        except Exception:
            pass

    def run(self, trino_sql: str, attempts: int = 5) -> Result:
        import trino

        started = time.perf_counter()
        for attempt in range(1, attempts + 1):
            cur = self.conn.cursor()
            try:
                cur.execute(trino_sql)
                rows = [tuple(r) for r in cur.fetchall()]
                break
            except trino.exceptions.TrinoQueryError as exc:
                # A server that has just started may not yet schedule on itself: wait a little.
                if exc.error_name != "NO_NODES_AVAILABLE" or attempt == attempts:
                    raise
                time.sleep(1.0)
        return Result([d[0] for d in cur.description], rows, self.name, time.perf_counter() - started, trino_sql)

    def refresh(self) -> None:
        """Nothing to do: Trino reads each table's current snapshot from the catalog per query."""

    def close(self) -> None:
        self.conn.close()


def local_trino(settings: Settings, timeout: float = 0.5) -> bool:
    """A Trino server answers at ``settings.host:settings.trino_port`` (``/v1/info``, started)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{settings.host}:{settings.trino_port}/v1/info", timeout=timeout) as r:
            body = json.loads(r.read())
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and "nodeVersion" in body and body.get("starting") is False


def engine_for(settings: Settings):
    """Trino when ``USERSIGNALS_TRINO_HOST`` is set, else the local Trino if one answers at
    ``settings.host:settings.trino_port``, else the embedded engine on the lake. The engine's
    ``name`` says which."""
    if settings.trino_host or local_trino(settings):
        return TrinoEngine(settings)
    return EmbeddedEngine(settings)
