"""The indexing job's lake writes, as Flink SQL over Iceberg's own Flink connector.

The job's Python operator emits one plain row per valid event, with the features it stored
(its main output), and dead letters (a side output): one row per event rather than one per
table, as rows crossing from the Python worker to the JVM are what costs. Each stream becomes
a temporary view, and one ``INSERT INTO`` per table hands it to Iceberg's Flink sink, which writes data files
as rows arrive and commits them on every completed checkpoint, recording the checkpoint in
the snapshot: a restarted job (from a retained checkpoint) commits what the checkpoint
covered once and replays the rest, so each table gets every row exactly once.
``served_features`` is read from its topic by Flink's Kafka SQL source and lands the same way.

Everything here is text (statements and type lists), so it is tested without a cluster.
"""
from __future__ import annotations

from usersignals import lake
from usersignals.settings import Settings


# (name, Flink type) of the one row the Python operator emits per valid event, which both
# raw_events and enriched_events are filled from (then come the item-feature columns). Times are
# epoch milliseconds; the INSERTs turn them into the tables' timestamptz columns. An event of a
# type no dataset is registered for has no dataset (NULL): raw_events keeps it, enriched_events
# (the indexed events) does not.
INDEXED_FIELDS = (("event_id", "STRING"), ("user_id", "STRING"), ("event_type", "STRING"), ("item_id", "STRING"),
                  ("event_time_ms", "BIGINT"), ("surface", "STRING"), ("dwell_ms", "BIGINT"), ("query", "STRING"),
                  ("dataset", "STRING"), ("indexed_at_ms", "BIGINT"), ("kafka_partition", "INT"),
                  ("kafka_offset", "BIGINT"))
# The dead-letter side output's fields (streaming.functions.DLQ_TYPE).
DLQ_FIELDS = ("key", "value", "reason", "detail", "source_topic", "partition", "offset")

# Flink type of each item-feature column type the lake declares (the registry's [features], iceberg_schemas.tables).
FEATURE_FLINK_TYPES = {"STRING": "STRING", "DOUBLE": "DOUBLE", "FLOAT": "FLOAT", "BIGINT": "BIGINT",
                       "INT": "INT", "ARRAY<FLOAT>": "ARRAY<FLOAT>"}


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _options(options: dict[str, str]) -> str:
    return ",\n  ".join(f"{_quote(k)} = {_quote(v)}" for k, v in options.items())


def catalog_ddl(settings: Settings) -> str:
    # The Flink catalog's name is the catalog's own (``lake``): Iceberg's JDBC catalog keys its
    # rows by it, so every engine must use the same one.
    return f"CREATE CATALOG `{settings.lake_catalog}` WITH (\n  {_options(lake.flink_catalog_options(settings))}\n)"


def table_path(settings: Settings, table: str) -> str:
    return f"`{settings.lake_catalog}`.`{settings.lake_namespace}`.`{table}`"


def write_options(settings: Settings) -> str:
    """Per-INSERT sink options (a dynamic-table-options hint): data file size. (Rows are not
    shuffled by partition to the writers, ``write.distribution-mode=hash``: measured, it cost CPU
    per event and did not shorten the freshness tail.)"""
    return f"/*+ OPTIONS('target-file-size-bytes'='{settings.lake_target_file_mb << 20}') */"


def _ts(column_ms: str) -> str:
    return f"TO_TIMESTAMP_LTZ({column_ms}, 3)"


def raw_insert(settings: Settings, view: str) -> str:
    return (f"INSERT INTO {table_path(settings, lake.RAW_EVENTS)} {write_options(settings)}\n"
            f"SELECT event_id, user_id, event_type, item_id, {_ts('event_time_ms')} AS event_time, surface, "
            f"dwell_ms, `query`, kafka_partition, kafka_offset, {_ts('indexed_at_ms')} AS ingested_at\n"
            f"FROM {view}")


def enriched_insert(settings: Settings, view: str, features: list[str]) -> str:
    feats = "".join(f", `{f}`" for f in features)
    return (f"INSERT INTO {table_path(settings, lake.ENRICHED_EVENTS)} {write_options(settings)}\n"
            f"SELECT event_id, user_id, event_type, item_id, {_ts('event_time_ms')} AS event_time, surface, "
            f"dwell_ms, `query`, dataset, {_ts('indexed_at_ms')} AS indexed_at, 'stream' AS enriched_by{feats}\n"
            f"FROM {view}\nWHERE dataset IS NOT NULL")


def dlq_insert(settings: Settings, view: str) -> str:
    return (f"INSERT INTO {table_path(settings, lake.DEAD_LETTERS)} {write_options(settings)}\n"
            f"SELECT `key`, `value`, reason, detail, source_topic, `partition` AS source_partition, "
            f"`offset` AS source_offset, CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(6)) AS received_at\n"
            f"FROM {view}")


SERVED_SOURCE = "served_features_topic"


def served_source_ddl(settings: Settings) -> str:
    """The served-features topic as a Flink SQL table (the record value as text)."""
    options = {
        "connector": "kafka", "topic": settings.served_topic, "properties.bootstrap.servers": settings.broker,
        "properties.group.id": "usersignals-lake-served", "scan.startup.mode": "group-offsets",
        "properties.auto.offset.reset": "earliest", "properties.client.id.prefix": "usersignals-lake-served",
        "format": "raw", "raw.charset": "UTF-8",
    }
    return (f"CREATE TEMPORARY TABLE {SERVED_SOURCE} (`record` STRING)\n"
            f"WITH (\n  {_options(options)}\n)")


def served_insert(settings: Settings) -> str:
    """served_features rows from the API's JSON records; a record without its required fields
    (not valid JSON, or another shape) is not landed."""
    j = "JSON_VALUE(`record`, '$.{}')".format
    return (f"INSERT INTO {table_path(settings, lake.SERVED_FEATURES)} {write_options(settings)}\n"
            f"SELECT request_id, tenant, config_version, TO_TIMESTAMP_LTZ(ts_ms, 3) AS served_at, user_id, "
            f"format, features FROM (\n"
            f"  SELECT {j('request_id')} AS request_id, {j('tenant')} AS tenant,\n"
            f"    CAST({j('config_version')} AS INT) AS config_version,\n"
            f"    CAST({j('ts')} AS BIGINT) AS ts_ms, {j('user_id')} AS user_id, {j('format')} AS format,\n"
            f"    JSON_QUERY(`record`, '$.features') AS features\n"
            f"  FROM {SERVED_SOURCE})\n"
            f"WHERE request_id IS NOT NULL AND tenant IS NOT NULL AND ts_ms IS NOT NULL AND user_id IS NOT NULL")


def feature_columns(column_types: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(name, Flink type) of enriched_events' item-feature columns, from the table's columns as
    the Flink catalog reports them (``name``, ``type`` such as ``DOUBLE`` or ``ARRAY<FLOAT>``)."""
    out = []
    for name, ftype in column_types:
        if name in lake.ENRICHED_BASE_COLUMNS:
            continue
        base = ftype.replace(" NOT NULL", "")
        if base not in FEATURE_FLINK_TYPES:
            raise ValueError(f"enriched_events.{name}: no Flink mapping for {ftype}")
        out.append((name, FEATURE_FLINK_TYPES[base]))
    return out
