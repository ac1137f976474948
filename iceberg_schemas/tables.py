"""The lake's tables as code: columns, partition specs, sort orders and properties.

Each ``TableDef`` is the desired state of one Iceberg table; ``iceberg_schemas.migrate``
creates what is missing and evolves what differs (new columns, new partition fields,
properties, sort order) without rewriting data. Column names are a public contract
(analysts' queries, Spark jobs and the indexing job's lake sink use them): add, never rename.

Item-feature columns are typed by the registry (``[features.<name>]``, mapped to Iceberg types by
``ICEBERG_TYPES``); ``item_features`` has one column per registered feature and ``enriched_events``
one per indexing-time enrichment field, so registering a feature (and an enrichment storing it)
and running ``migrate`` adds its columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import NullOrder, SortDirection, SortField, SortOrder
from pyiceberg.transforms import IdentityTransform, parse_transform
from pyiceberg.types import (
    BinaryType, BooleanType, DateType, DoubleType, FloatType, IcebergType, IntegerType, ListType, LongType,
    NestedField, StringType, TimestamptzType,
)

from usersignals import lake
from usersignals.registry import Registry

# The Iceberg type of each item-feature type the registry allows (usersignals.registry.FEATURE_TYPES).
ICEBERG_TYPES: dict[str, IcebergType] = {
    "string": StringType(),
    "double": DoubleType(),
    "float": FloatType(),
    "bigint": LongType(),
    "int": IntegerType(),
    "array<float>": ListType(element_id=1, element_type=FloatType(), element_required=False),
}


def feature_types(registry: Registry) -> dict[str, IcebergType]:
    """Item feature -> its Iceberg column type, in registry order (the columns of item_features)."""
    return {f.name: ICEBERG_TYPES[f.type] for f in registry.features.values()}

COMMON_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    # Appends from the stream never conflict with a daily overwrite of a closed day.
    "write.merge.isolation-level": "snapshot",
    "write.delete.isolation-level": "snapshot",
    "write.update.isolation-level": "snapshot",
    "history.expire.max-snapshot-age-ms": str(5 * 24 * 3600 * 1000),
    "history.expire.min-snapshots-to-keep": "50",
    "commit.retry.num-retries": "10",
}

# Tables with user rows: a user's erasure writes position deletes (a small file per data file
# touched) instead of rewriting every streamed file that holds one of the user's rows; the
# nightly compaction then rewrites the files with deletes (batch.jobs.maintenance).
USER_ROWS_PROPERTIES = {"write.delete.mode": "merge-on-read"}

# The audit of erasures (batch.jobs.delete_user): one row per completed deletion.
DELETIONS = "deletions"
# Point-in-time training examples (batch.training): from the lake or from what was served.
TRAINING_EXAMPLES = "training_examples"


@dataclass(frozen=True)
class Column:
    name: str
    type: IcebergType
    required: bool = False
    doc: str | None = None


@dataclass(frozen=True)
class TableDef:
    name: str
    doc: str
    columns: tuple[Column, ...]
    partition: tuple[tuple[str, str], ...] = ()   # (column, transform) e.g. ("event_time", "day")
    sort: tuple[tuple[str, str], ...] = ()        # (column, "asc"|"desc")
    properties: dict[str, str] = field(default_factory=dict)
    # Days a row is kept, counted on the day partition's column; None: kept until deleted.
    retention_days: int | None = None
    # Erasure: the column naming the user a row is about (None: no user rows), and the column of
    # when the row arrived, so that a deletion removes what arrived up to its request and no later.
    user_column: str | None = None
    arrival_column: str | None = None

    def __post_init__(self):
        if self.retention_days is not None and (self.retention_days < 1 or self.day_column() is None):
            raise ValueError(f"table {self.name}: retention_days={self.retention_days} needs a positive number "
                             f"of days and a day partition, got partition {self.partition}")
        names = {c.name for c in self.columns}
        for what in ("user_column", "arrival_column"):
            col = getattr(self, what)
            if col is not None and col not in names:
                raise ValueError(f"table {self.name}: {what}={col!r} is not one of its columns {sorted(names)}")
        if (self.user_column is None) != (self.arrival_column is None):
            raise ValueError(f"table {self.name}: user_column and arrival_column go together")

    def day_column(self) -> str | None:
        """The column of the table's day partition (what retention counts on), if it has one."""
        return next((col for col, tr in self.partition if tr == "day"), None)

    def schema(self) -> Schema:
        # Field ids here are placeholders: the catalog assigns fresh ones on create, and
        # evolution matches columns by name.
        extra_ids = iter(range(len(self.columns) + 1, 10 * len(self.columns) + 10))
        fields = []
        for i, col in enumerate(self.columns, start=1):
            ftype = col.type
            if isinstance(ftype, ListType):
                ftype = ListType(element_id=next(extra_ids), element_type=ftype.element_type,
                                 element_required=ftype.element_required)
            fields.append(NestedField(i, col.name, ftype, required=col.required, doc=col.doc))
        return Schema(*fields)

    def partition_spec(self, schema: Schema) -> PartitionSpec:
        return PartitionSpec(*[
            PartitionField(source_id=schema.find_field(col).field_id, field_id=1000 + i,
                           transform=parse_transform(tr), name=partition_name(col, tr))
            for i, (col, tr) in enumerate(self.partition)])

    def sort_order(self, schema: Schema) -> SortOrder:
        if not self.sort:
            return SortOrder(order_id=0)
        return SortOrder(*[
            SortField(source_id=schema.find_field(col).field_id, transform=IdentityTransform(),
                      direction=SortDirection.ASC if d == "asc" else SortDirection.DESC,
                      null_order=NullOrder.NULLS_FIRST if d == "asc" else NullOrder.NULLS_LAST)
            for col, d in self.sort])

    def all_properties(self) -> dict[str, str]:
        return {**COMMON_PROPERTIES, "comment": self.doc, **self.properties}


def partition_name(column: str, transform: str) -> str:
    return column if transform == "identity" else f"{column}_{transform}"


EVENT_COLUMNS = (
    Column("event_id", StringType(), True, "Producer-assigned id; the deduplication key"),
    Column("user_id", StringType(), True),
    Column("event_type", StringType(), True, "A registered event type"),
    Column("item_id", StringType(), True),
    Column("event_time", TimestamptzType(), True, "Event time (the contract's ts, epoch ms)"),
    Column("surface", StringType()),
    Column("dwell_ms", LongType()),
    Column("query", StringType()),
)


def enrichment_fields(registry: Registry) -> tuple[str, ...]:
    """Item-feature fields stored on indexed events: every indexing-stage enrichment's fields."""
    names = [f for e in registry.enrichments.values() if e.stage == "indexing" for f in e.fields]
    return tuple(dict.fromkeys(names))  # each typed: the registry refuses an untyped enrichment field


def _embeddings(name: str, key: str, what: str) -> TableDef:
    """A model output table: one embedding per ``key`` and model version."""
    per_user = key == "user_id"
    return TableDef(name, f"{what} embeddings produced by model retraining, one partition per model version.",
                    (Column("model_version", StringType(), True), Column(key, StringType(), True),
                     Column("embedding", ICEBERG_TYPES["array<float>"]),
                     Column("created_at", TimestamptzType(), True)),
                    (("model_version", "identity"),), properties=USER_ROWS_PROPERTIES if per_user else {},
                    user_column=key if per_user else None, arrival_column="created_at" if per_user else None)


def table_defs(registry: Registry) -> dict[str, TableDef]:
    day_and_type = (("event_time", "day"), ("event_type", "identity"))
    by_user = (("user_id", "asc"), ("event_time", "asc"))
    defs = [
        TableDef(lake.RAW_EVENTS, "Every valid event as received from Kafka, once (the indexing job's "
                 "Iceberg sink commits on its checkpoints).",
                 EVENT_COLUMNS + (
                     Column("kafka_partition", IntegerType()), Column("kafka_offset", LongType()),
                     Column("ingested_at", TimestamptzType(), doc="When the indexing job read the record")),
                 day_and_type, by_user, USER_ROWS_PROPERTIES, retention_days=400,
                 user_column="user_id", arrival_column="ingested_at"),
        TableDef(lake.ENRICHED_EVENTS, "Indexed events with their indexing-time item features, as the "
                 "stream enriched them (enriched_by='stream') or as the daily job recomputed them ('daily').",
                 EVENT_COLUMNS + (
                     Column("dataset", StringType(), True, "The real-time dataset that holds the event"),
                     Column("indexed_at", TimestamptzType()),
                     Column("enriched_by", StringType(), doc="stream | daily | backfill"),
                 ) + tuple(Column(f, feature_types(registry)[f]) for f in enrichment_fields(registry)),
                 # Recomputable from raw_events (daily job), so kept for less.
                 day_and_type, by_user, USER_ROWS_PROPERTIES, retention_days=90,
                 user_column="user_id", arrival_column="indexed_at"),
        TableDef(lake.ITEM_FEATURES, "Item features: the source of every enrichment (one row per item and "
                 "version; the newest updated_at wins).",
                 (Column("item_id", StringType(), True),)
                 + tuple(Column(f, t) for f, t in feature_types(registry).items())
                 + (Column("updated_at", TimestamptzType(), True),),
                 (), (("item_id", "asc"),)),
        TableDef(lake.DEAD_LETTERS, "Rejected records from the indexing job's dead-letter topic, bytes "
                 "untouched, with the reason code.",
                 (Column("key", BinaryType()), Column("value", BinaryType()),
                  Column("reason", StringType(), True), Column("detail", StringType()),
                  Column("source_topic", StringType()), Column("source_partition", IntegerType()),
                  Column("source_offset", LongType()), Column("received_at", TimestamptzType(), True)),
                 (("received_at", "day"),), properties=USER_ROWS_PROPERTIES, retention_days=30,
                 # The record's Kafka key is its user id (the producer's contract); a record too
                 # malformed to carry it is not attributable and goes with the 30 days' retention.
                 user_column="key", arrival_column="received_at"),
        TableDef(lake.SERVED_FEATURES, "Features the serving API returned (sampled per tenant), for training.",
                 (Column("request_id", StringType(), True), Column("tenant", StringType(), True),
                  Column("config_version", IntegerType()), Column("served_at", TimestamptzType(), True),
                  Column("user_id", StringType(), True), Column("format", StringType()),
                  Column("features", StringType(), doc="JSON, as served")),
                 (("served_at", "day"), ("tenant", "identity")), properties=USER_ROWS_PROPERTIES,
                 retention_days=90, user_column="user_id", arrival_column="served_at"),
        _embeddings(lake.ITEM_EMBEDDINGS, "item_id", "Item"),
        _embeddings(lake.USER_EMBEDDINGS, "user_id", "User"),
        TableDef(lake.MODEL_RUNS, "One row per retraining run: parameters, training window, holdout "
                 "metrics of the candidate, the popularity baseline and the promoted model, and the gate's "
                 "decision.",
                 (Column("model_version", StringType(), True), Column("trained_at", TimestamptzType(), True),
                  Column("holdout_day", StringType(), True), Column("params", StringType(), doc="JSON"),
                  Column("interactions", LongType()), Column("users", LongType()), Column("items", LongType()),
                  Column("k", IntegerType()), Column("recall_at_k", DoubleType()), Column("ndcg_at_k", DoubleType()),
                  Column("baseline_recall_at_k", DoubleType()), Column("baseline_ndcg_at_k", DoubleType()),
                  Column("current_version", StringType()), Column("current_recall_at_k", DoubleType()),
                  Column("current_ndcg_at_k", DoubleType()), Column("promoted", BooleanType(), True),
                  Column("decision", StringType(), doc="why the gate promoted or rejected"),
                  Column("seq_recall_at_k", DoubleType(), doc="recall@K of the sequence model (each user's decayed "
                         "mean of their sequence's item embeddings) on the same users"),
                  Column("seq_ndcg_at_k", DoubleType()),
                  Column("seq_beats_baseline", BooleanType(), doc="whether the sequence model beats the popularity "
                         "baseline by the margin on both metrics (recorded; it promotes nothing)")),
                 ()),
        TableDef(lake.SELECTED_SEQUENCES, "Sequences materialised by event-selection experiments.",
                 (Column("experiment", StringType(), True), Column("dataset", StringType(), True),
                  Column("user_id", StringType(), True), Column("rank", IntegerType(), True),
                  Column("event_id", StringType(), True), Column("item_id", StringType()),
                  Column("event_time", TimestamptzType()), Column("score", DoubleType()),
                  Column("created_at", TimestamptzType()),
                  Column("rule", StringType(), doc="The selection rule (registry [selection_rules]); dataset is "
                         "the experiment's derived dataset exp_<experiment>_<rule>")),
                 (("experiment", "identity"),), properties=USER_ROWS_PROPERTIES,
                 user_column="user_id", arrival_column="created_at"),
        TableDef(lake.SELECTION_REPORTS, "Event-selection rules compared (python -m batch select): per run and "
                 "rule, how well each user's k selected events of the window predict the next day's engagement.",
                 (Column("experiment", StringType(), True), Column("rule", StringType(), True),
                  Column("dataset", StringType(), True, "The source dataset the rules select from"),
                  Column("k", IntegerType(), True, "Events selected per user"),
                  Column("window_start", TimestamptzType(), True),
                  Column("window_end", TimestamptzType(), True, "Exclusive: the as-of day boundary"),
                  Column("eval_day", StringType(), True, "The day after the window (YYYY-MM-DD): its engagements "
                         "of the registry's relevant types are what the selection should predict"),
                  Column("users_evaluated", LongType(), True, "Users with events in the window and a relevant "
                         "engagement on eval_day (the same for every rule of the run)"),
                  Column("recall_at_k", DoubleType()), Column("ndcg_at_k", DoubleType()),
                  Column("baseline_rule", StringType(), doc="The rule lifts are relative to (last)"),
                  Column("recall_lift", DoubleType(), doc="recall_at_k / the baseline's - 1 (NULL: baseline 0)"),
                  Column("ndcg_lift", DoubleType(), doc="ndcg_at_k / the baseline's - 1 (NULL: baseline 0)"),
                  Column("select_seconds", DoubleType(), doc="Wall time of the rule's selection"),
                  Column("run_at", TimestamptzType(), True, "When the run wrote the row")),
                 (("experiment", "identity"),)),
        TableDef(DELETIONS, "The audit of user erasures: one row per completed deletion, saying who asked, "
                 "when, and how much was removed from each store and table; never the removed data, and the "
                 "user only as the sha256 of the id.",
                 (Column("request_id", StringType(), True, "Id of the erasure request"),
                  Column("user_id_sha256", StringType(), True, "sha256 (hex) of the erased user id"),
                  Column("requested_by", StringType(), True, "Who asked: 'admin-api', or the operator given "
                         "to python -m batch delete-user --requested-by"),
                  Column("reason", StringType(), doc="Why, as the requester stated it"),
                  Column("requested_at", TimestamptzType(), True),
                  Column("kv_deleted_at", TimestamptzType(), doc="When the KV layer's keys were deleted"),
                  Column("completed_at", TimestamptzType(), True, "When the lake's row-level deletes committed"),
                  Column("removed", StringType(), True, "JSON: store or table -> rows or keys removed, "
                         "e.g. {\"kv.clicks\": 12, \"lake.raw_events\": 40}")),
                 (("requested_at", "month"),)),
        TableDef(TRAINING_EXAMPLES, "Point-in-time training examples (batch.training): per labelled moment, "
                 "the user's newest events of each dataset strictly before it, one row per example and event "
                 "(an example without any event: one row, dataset NULL). source='lake': rebuilt from raw_events "
                 "with the item features valid at ts; 'served': what the API served (served_features), "
                 "labelled by the engagement that followed.",
                 (Column("example_id", StringType(), True, "lake: the label's event id (or a hash of user, ts "
                         "and label); served: request_id:user_id"),
                  Column("source", StringType(), True, "lake | served"),
                  Column("user_id", StringType(), True),
                  Column("ts", TimestamptzType(), True, "The labelled moment: sequences hold events strictly "
                         "before it"),
                  Column("label", StringType(), doc="lake: the label's event type (or the labels table's "
                         "value); served: the first engagement's event type within the window, or 'none'"),
                  Column("request_id", StringType(), doc="served: the API request"),
                  Column("tenant", StringType(), doc="served: the tenant the request was for"),
                  Column("dataset", StringType(), doc="The sequence this event is in; NULL: no event at all"),
                  Column("rank", IntegerType(), doc="1 = newest before ts"),
                  Column("event_id", StringType(), doc="NULL when served as Arrow (hashes only)"),
                  Column("item_id", StringType(), doc="NULL when served as Arrow (hashes only)"),
                  Column("item_hash", LongType(), doc="serving.featurize.item_hash of item_id"),
                  Column("type_id", IntegerType(), doc="The registry's event type id"),
                  Column("event_time", TimestamptzType()),
                  Column("age_s", FloatType(), doc="ts minus event time, seconds"),
                  Column("dwell_ms", LongType()))
                 + tuple(Column(f, feature_types(registry)[f], doc="As of ts (lake source)")
                         for f in enrichment_fields(registry))
                 + (Column("created_at", TimestamptzType(), True, "When the job wrote the row"),),
                 (("ts", "day"), ("source", "identity")), (("user_id", "asc"), ("ts", "asc")),
                 USER_ROWS_PROPERTIES, retention_days=400, user_column="user_id", arrival_column="created_at"),
        TableDef(lake.FEATURE_SKEW, "Online/offline feature skew (batch.skew): per day, tenant, dataset and "
                 "feature, how many sampled served values were compared with the lake's rebuild of the same "
                 "request, how many differed, and how many only one side had.",
                 (Column("day", DateType(), True, "UTC day of the served requests"),
                  Column("tenant", StringType(), True),
                  Column("dataset", StringType(), True),
                  Column("feature", StringType(), True, "A served field: item_id, type_id, age_s, dwell_ms, "
                         "embedding (arrow); event_id, item_id, event_time, surface, dwell_ms, query and item "
                         "features such as category (json)"),
                  Column("requests", LongType(), True, "Sampled requests of the tenant that day"),
                  Column("compared", LongType(), True, "Values both sides had"),
                  Column("mismatched", LongType(), True, "Compared values that differ beyond the tolerance"),
                  Column("missing_online", LongType(), True, "Values only the lake's rebuild had"),
                  Column("missing_offline", LongType(), True, "Values only the served log had"),
                  Column("mismatch_rate", DoubleType(), doc="mismatched / compared; NULL when none compared"),
                  Column("config_versions", StringType(), doc="The tenant config versions of the compared "
                         "requests, comma-separated"),
                  Column("computed_at", TimestamptzType(), True)),
                 (("day", "day"),), (("tenant", "asc"), ("dataset", "asc"), ("feature", "asc")),
                 retention_days=400),
    ]
    return {d.name: d for d in defs}

