"""Point-in-time training examples: each labelled moment with the user's sequences as they were then.

Two ways to the same rows:

- **from the lake** (``source='lake'``): for every label ``(user_id, ts, label)`` — by default each
  relevant engagement of the day (``Registry.relevant_types``), or the rows of a labels table —
  the user's newest N events of each dataset strictly before ``ts`` (N: the registry's retention,
  or a tenant's sequence mix), from deduplicated ``raw_events``, with the item features valid at
  ``ts`` (``item_features`` keeps every version: the newest row with ``updated_at <= ts``).
- **log and wait** (``source='served'``): the sequences the API actually served, read back from
  ``served_features``, each request labelled by the user's first engagement within a window after
  it (``'none'`` when there was none).

Both give the long rows of ``training_examples`` (one per example and sequence event; an example
with no event at all keeps one row with ``dataset`` NULL) and, through ``model_ready``, the API's
Arrow layout (``serving.featurize``: ``<ds>.item_hash``, ``type_id``, ``age_s``, ``dwell_ms``,
``mask``, left-aligned newest first, zero-padded to the dataset's length), one row per example,
which the job exports as Parquet for trainers.

The transforms are pure (DataFrames in, DataFrames out); ``training_examples`` is the job.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
from dataclasses import replace
from typing import Mapping

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as S

from batch import transforms as T
from batch.progress import Progress
from iceberg_schemas.tables import TRAINING_EXAMPLES
from usersignals import lake
from usersignals.registry import Registry, Tenant

log = logging.getLogger(__name__)

SOURCES = ("lake", "served")
# The example's own columns, then its sequence rows' (the table's column order, features last).
EXAMPLE_COLUMNS = ("example_id", "source", "user_id", "ts", "label", "request_id", "tenant")
SEQUENCE_COLUMNS = ("dataset", "rank", "event_id", "item_id", "item_hash", "type_id", "event_time", "age_s",
                    "dwell_ms")
# The Arrow layout's per-dataset arrays and their Spark types (serving.featurize.FIELDS; Spark has
# no unsigned byte, so mask is int8 with the same 0/1 values).
LAYOUT_FIELDS = (("item_hash", "bigint"), ("type_id", "smallint"), ("age_s", "float"), ("dwell_ms", "float"),
                 ("mask", "tinyint"))
NO_LABEL = "none"


def item_hash(item_id: str) -> int:
    """Stable 63-bit hash of an item id: the same as ``serving.featurize.item_hash`` (a test
    holds them equal), repeated here so the executors need not import the serving package."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little") >> 1


_item_hash_udf = F.udf(lambda i: None if i is None else item_hash(i), S.LongType())


def dataset_lengths(registry: Registry, tenant: str | None = None) -> dict[str, int]:
    """dataset -> N: a tenant's sequence mix, or every real-time dataset's retention (an
    experiment's derived datasets are not in the lake's events)."""
    if tenant is None:
        return {d: ds.retention for d, ds in registry.realtime_datasets().items()}
    if tenant not in registry.tenants:
        raise ValueError(f"unknown tenant {tenant!r}; registered: {sorted(registry.tenants)}")
    return dict(registry.tenants[tenant].sequences)


def _datasets_frame(spark, registry: Registry, lengths: Mapping[str, int], tenant: Tenant | None = None) -> DataFrame:
    """One row per dataset: its type, N (``_limit``) and how many newest events a label looks at
    before filters (``_cap``): N, or with a tenant the window the API fetches for it
    (``Registry.fetch_limits``: N, twice N when its filters can drop events, at most the retention)."""
    realtime = registry.realtime_datasets()
    unknown = sorted(set(lengths) - set(realtime))
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; real-time datasets: {sorted(realtime)}")
    caps = dict(lengths) if tenant is None else registry.fetch_limits(replace(tenant, sequences=dict(lengths)))
    rows = [(d, registry.datasets[d].event_type, registry.event_types[registry.datasets[d].event_type].id, n,
             caps[d]) for d, n in lengths.items()]
    return spark.createDataFrame(rows, "dataset string, event_type string, type_id int, _limit int, _cap int")


# --- labels ----------------------------------------------------------------------------

def event_labels(events: DataFrame, label_types: list[str], start: dt.datetime, end: dt.datetime) -> DataFrame:
    """One example per event of ``label_types`` in [start, end): the event id, its user, its
    time and its type as the label."""
    return (events.where(T.in_range(start, end) & F.col("event_type").isin(list(label_types)))
                  .select(F.col("event_id").alias("example_id"), "user_id", F.col("event_time").alias("ts"),
                          F.col("event_type").alias("label")))


def table_labels(labels: DataFrame) -> DataFrame:
    """Labels given as a table (``user_id``, ``ts``, ``label``, optionally ``example_id``); an
    example without an id gets a stable one from its user, time and label."""
    missing = sorted({"user_id", "ts", "label"} - set(labels.columns))
    if missing:
        raise ValueError(f"a labels table needs columns user_id, ts, label; missing {missing} in {labels.columns}")
    example_id = (F.col("example_id") if "example_id" in labels.columns else
                  F.sha2(F.concat_ws("|", "user_id", F.date_format("ts", "yyyy-MM-dd'T'HH:mm:ss.SSSSSSX"),
                                     F.col("label").cast("string")), 256))
    return labels.select(example_id.alias("example_id"), "user_id", "ts", F.col("label").cast("string"))


def engagement_labels(requests: DataFrame, events: DataFrame, label_types: list[str],
                      window: dt.timedelta) -> DataFrame:
    """Log and wait: each served request's label is the type of the user's first engagement of
    ``label_types`` in (served time, served time + window], or ``'none'``."""
    eng = events.where(F.col("event_type").isin(list(label_types))).select(
        F.col("user_id").alias("_u"), F.col("event_time").alias("_t"), F.col("event_type").alias("_type"),
        F.col("event_id").alias("_e"))
    secs = int(window.total_seconds())
    cond = ((F.col("user_id") == F.col("_u")) & (F.col("_t") > F.col("ts"))
            & (F.col("_t") <= F.col("ts") + F.expr(f"INTERVAL {secs} SECONDS")))
    w = Window.partitionBy("example_id").orderBy(F.col("_t").asc_nulls_last(), F.col("_e"))
    return (requests.join(eng, cond, "left").withColumn("_n", F.row_number().over(w)).where("_n = 1")
                    .withColumn("label", F.coalesce(F.col("_type"), F.lit(NO_LABEL)))
                    .drop("_u", "_t", "_type", "_e", "_n"))


# --- from the lake ---------------------------------------------------------------------

def sequences_before(labels: DataFrame, events: DataFrame, registry: Registry, lengths: Mapping[str, int],
                     lookback: dt.timedelta, tenant: Tenant | None = None) -> DataFrame:
    """Each label's user's newest ``lengths[dataset]`` events of each dataset with
    ``ts - lookback <= event_time < ts`` (strictly before: an event at ``ts``, the label's own
    included, is the future), ranked 1 = newest (equal times: the greater event id first), with
    ``type_id`` and ``age_s`` (``ts`` minus event time, in seconds, as the API computes it).
    ``events``: deduplicated raw events.

    With ``tenant``, what the API would have served that tenant at ``ts``: of the newest events
    it fetches from the KV layer (``Registry.fetch_limits``), those its filters keep
    (``serving.filtering``: excluded items, max age, surfaces, min dwell, newest per item), then
    the first ``lengths[dataset]``.

    Each user's events are sorted once, not joined with every label (labels x events is what a
    heavy user makes unaffordable): an event's ``_seq`` is its position among its user's events
    of its dataset, oldest first; a label's ``_before`` is how many of those are strictly before
    ``ts`` (a running count over the labels and events sorted together), so its candidates are
    ``_seq`` = ``_before``, ``_before - 1``, ... — an equi-join of labels x cap rows."""
    # How far back a label looks before filters: a tenant's filters pick from what the API
    # fetches; without a tenant the newest N are the sequence.
    datasets = _datasets_frame(events.sparkSession, registry, lengths, tenant)
    ev = (events.where(F.col("user_id").isNotNull() & F.col("event_time").isNotNull())
                .join(F.broadcast(datasets), "event_type")
                .select("user_id", "dataset", "type_id", "event_id", "item_id", "event_time", "surface",
                        "dwell_ms"))
    per_user = Window.partitionBy("user_id", "dataset")
    ev = ev.withColumn("_seq", F.row_number().over(per_user.orderBy("event_time", "event_id"))) \
        .withColumn("item_hash", _item_hash_udf("item_id"))   # once per event, not once per example row
    marks = labels.where(F.col("user_id").isNotNull() & F.col("ts").isNotNull()) \
        .crossJoin(F.broadcast(datasets.select("dataset", "_limit", "_cap")))
    # A label's mark sorts before the events at its own ts (kind 0 < 1): the running count of
    # events at the mark is the number strictly before ts.
    timeline = marks.withColumn("_t", F.col("ts")).withColumn("_kind", F.lit(0)).unionByName(
        ev.select("user_id", "dataset", F.col("event_time").alias("_t"), F.lit(1).alias("_kind"),
                  F.col("event_id").alias("_event_id")), allowMissingColumns=True)
    running = per_user.orderBy("_t", "_kind", "_event_id").rowsBetween(Window.unboundedPreceding,
                                                                       Window.currentRow)
    before = F.sum("_kind").over(running)
    n = F.least(F.col("_before"), F.col("_cap"))
    candidates = (timeline.withColumn("_before", before).where("_kind = 0").where(n > 0)
                          .select(*labels.columns, "dataset", "_limit", "_before",
                                  F.explode(F.sequence(F.lit(1), n)).alias("_r"))
                          .withColumn("_seq", F.col("_before") - F.col("_r") + 1))
    # The cap counts from the newest event, the lookback from ts: dropping what is older than
    # the lookback after the join leaves the same newest events, at the same ranks.
    secs = int(lookback.total_seconds())
    out = (candidates.join(ev, ["user_id", "dataset", "_seq"])
                     .where(F.col("event_time") >= F.col("ts") - F.expr(f"INTERVAL {secs} SECONDS"))
                     .withColumn("rank", F.col("_r")))
    if tenant is not None:
        newest = [F.col("_r").asc()]
        out = T.tenant_filtered(out, tenant, "example_id", newest)
        out = out.withColumn("rank", F.row_number().over(Window.partitionBy("example_id", "dataset")
                                                                .orderBy(*newest)))
    age = ((F.unix_millis("ts") - F.unix_millis("event_time")) / 1000.0).cast("float")
    return (out.where(F.col("rank") <= F.col("_limit")).withColumn("age_s", age)
               .drop("_seq", "_r", "_before", "_limit", "surface"))


def features_as_of(rows: DataFrame, item_features: DataFrame, registry: Registry,
                   feature_fields: tuple[str, ...]) -> DataFrame:
    """``rows`` with each event's item features as they were at its example's ``ts``: the newest
    ``item_features`` version with ``updated_at <= ts`` (none: NULL), a field set only on the
    datasets that store it (their indexing-time enrichments), as ``batch.transforms.enrich`` does.

    Each version is valid from its ``updated_at`` until the item's next one, so a row matches at
    most one version: the join's output is ``rows``, whatever the number of versions."""
    until = F.lead("updated_at").over(Window.partitionBy("item_id").orderBy("updated_at"))
    feats = (item_features.where(F.col("item_id").isNotNull() & F.col("updated_at").isNotNull())
                          .withColumn("_until", until)
                          .select(F.col("item_id").alias("_i"), F.col("updated_at").alias("_at"), "_until",
                                  *[F.col(f).alias(f"_f_{f}") for f in feature_fields]))
    cond = ((F.col("item_id") == F.col("_i")) & (F.col("_at") <= F.col("ts"))
            & (F.col("_until").isNull() | (F.col("ts") < F.col("_until"))))
    out = rows.join(feats, cond, "left")
    for f in feature_fields:
        stored_by = [d for d, ds in registry.realtime_datasets().items() if f in registry.indexing_fields(ds)]
        out = out.withColumn(f, F.when(F.col("dataset").isin(stored_by), F.col(f"_f_{f}")))
    return out.drop("_i", "_at", "_until", *[f"_f_{f}" for f in feature_fields])


def with_empty_examples(examples: DataFrame, rows: DataFrame) -> DataFrame:
    """``rows`` plus one row (sequence columns NULL) for each example that has no event at all,
    so every labelled example is in the table."""
    empty = examples.join(rows.select("example_id").distinct(), "example_id", "left_anti")
    return rows.unionByName(empty, allowMissingColumns=True)


def lake_examples(labels: DataFrame, events: DataFrame, item_features: DataFrame, registry: Registry,
                  lengths: Mapping[str, int], feature_fields: tuple[str, ...], lookback: dt.timedelta,
                  tenant: Tenant | None = None) -> DataFrame:
    """The lake path's rows of ``training_examples`` (``source='lake'``); with ``tenant``, its
    filters applied as the API applies them (``sequences_before``)."""
    labels = labels.withColumn("source", F.lit("lake")).withColumn("request_id", F.lit(None).cast("string")) \
        .withColumn("tenant", F.lit(None).cast("string"))
    rows = features_as_of(sequences_before(labels, events, registry, lengths, lookback, tenant), item_features,
                          registry, feature_fields)
    return with_empty_examples(labels.select(*EXAMPLE_COLUMNS), rows)


# --- log and wait ----------------------------------------------------------------------

def served_requests(served: DataFrame) -> DataFrame:
    """One example per (request, user) of ``served_features``: its id is ``request_id:user_id``."""
    return served.select(F.concat_ws(":", "request_id", "user_id").alias("example_id"), "user_id",
                         F.col("served_at").alias("ts"), "request_id", "tenant", "format", "features")


def served_sequences(requests: DataFrame, registry: Registry, lengths: Mapping[str, int]) -> DataFrame:
    """The sequence rows the API served, from each request's logged ``features`` JSON.

    Arrow-format records (``serving.pipeline`` logs the arrays) give ``item_hash``, ``type_id``,
    ``age_s`` and ``dwell_ms`` of each position whose ``mask`` is 1 (item and event ids are not in
    them); JSON-format records give the events themselves, with ``age_s`` from the served time."""
    # Integers parsed as integers: a 63-bit item hash does not survive a double.
    json_types = {"item_hash": S.LongType(), "type_id": S.LongType(), "age_s": S.DoubleType(),
                  "dwell_ms": S.DoubleType(), "mask": S.LongType()}
    arrow_schema = S.StructType([S.StructField(f"{ds}.{f}", S.ArrayType(json_types[f]))
                                 for ds in lengths for f, _ in LAYOUT_FIELDS])
    event = S.StructType([S.StructField("event_id", S.StringType()), S.StructField("item_id", S.StringType()),
                          S.StructField("ts", S.LongType()), S.StructField("dwell_ms", S.LongType())])
    json_schema = S.StructType([S.StructField("sequences", S.MapType(S.StringType(), S.ArrayType(event)))])
    type_ids = {d: registry.event_types[registry.datasets[d].event_type].id for d in lengths}
    keys = [c for c in requests.columns if c not in ("format", "features")]
    parts = []
    arrays = requests.where(F.col("format") != "json").withColumn("_f", F.from_json("features", arrow_schema))
    for ds in lengths:
        arr = lambda f, ds=ds: F.col("_f").getField(f"{ds}.{f}")  # noqa: E731
        exploded = arrays.select(*keys, "_f", F.posexplode(arr("mask")).alias("_pos", "_mask")).where("_mask = 1")
        at = lambda f: F.element_at(arr(f), F.col("_pos") + 1)  # noqa: E731
        parts.append(exploded.select(
            *keys, F.lit(ds).alias("dataset"), (F.col("_pos") + 1).cast("int").alias("rank"),
            F.lit(None).cast("string").alias("event_id"), F.lit(None).cast("string").alias("item_id"),
            at("item_hash").cast("bigint").alias("item_hash"), at("type_id").cast("int").alias("type_id"),
            # The event's time back from its age (to the millisecond float32 allows).
            F.timestamp_millis((F.unix_millis("ts") - at("age_s") * 1000).cast("bigint")).alias("event_time"),
            at("age_s").cast("float").alias("age_s"), at("dwell_ms").cast("bigint").alias("dwell_ms")))
    js = requests.where(F.col("format") == "json").withColumn("_f", F.from_json("features", json_schema))
    seqs = js.select(*keys, F.explode(F.col("_f.sequences")).alias("dataset", "_evs")) \
        .where(F.col("dataset").isin(list(lengths)))
    evs = seqs.select(*keys, "dataset", F.posexplode("_evs").alias("_pos", "_e"))
    limit = None
    for d, n in lengths.items():
        limit = (F.when if limit is None else limit.when)(F.col("dataset") == d, F.lit(n))
    tid = None
    for d, i in type_ids.items():
        tid = (F.when if tid is None else tid.when)(F.col("dataset") == d, F.lit(i))
    parts.append(evs.where(F.col("_pos") < limit).select(
        *keys, "dataset", (F.col("_pos") + 1).cast("int").alias("rank"), F.col("_e.event_id").alias("event_id"),
        F.col("_e.item_id").alias("item_id"), _item_hash_udf(F.col("_e.item_id")).alias("item_hash"),
        tid.cast("int").alias("type_id"), F.timestamp_millis(F.col("_e.ts")).alias("event_time"),
        ((F.unix_millis("ts") - F.col("_e.ts")) / 1000.0).cast("float").alias("age_s"),
        F.col("_e.dwell_ms").alias("dwell_ms")))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def served_examples(served: DataFrame, events: DataFrame, registry: Registry, lengths: Mapping[str, int],
                    label_types: list[str], window: dt.timedelta) -> DataFrame:
    """The log-and-wait rows of ``training_examples`` (``source='served'``): what was served,
    labelled by the engagement that followed within ``window``."""
    requests = engagement_labels(served_requests(served), events, label_types, window) \
        .withColumn("source", F.lit("served"))
    rows = served_sequences(requests, registry, lengths)
    return with_empty_examples(requests.select(*EXAMPLE_COLUMNS), rows)


# --- the trainer's layout ----------------------------------------------------------------

def _layout_value(name: str, typ: str):
    """The lambda of one layout array over a sequence's event structs (one argument only:
    Spark's ``transform`` reads a second as the element's index)."""
    if name == "mask":
        return lambda e: F.lit(1).cast(typ)
    return lambda e: F.coalesce(e[name], F.lit(0)).cast(typ)


def model_ready(rows: DataFrame, lengths: Mapping[str, int]) -> DataFrame:
    """One row per example: its columns, then per dataset the Arrow layout's arrays, each of
    exactly ``lengths[dataset]`` values, left-aligned newest first, zero where ``mask`` is 0."""
    examples = rows.select(*EXAMPLE_COLUMNS).dropDuplicates(["example_id"])
    seqs = (rows.where(F.col("dataset").isNotNull())
                .groupBy("example_id", "dataset")
                .agg(F.sort_array(F.collect_list(F.struct("rank", "item_hash", "type_id", "age_s",
                                                          "dwell_ms"))).alias("_evs")))
    out = examples
    for ds, length in lengths.items():
        col = f"_evs_{ds}"
        out = out.join(seqs.where(F.col("dataset") == ds).select("example_id", F.col("_evs").alias(col)),
                       "example_id", "left")
        evs = F.slice(F.col(col), 1, length)
        # size(NULL) is -1 in Spark: an example without this dataset's events pads all of it.
        pad = F.lit(length) - F.when(F.col(col).isNull(), F.lit(0)).otherwise(F.size(evs))
        arrays = []
        for name, typ in LAYOUT_FIELDS:
            values = F.transform(evs, _layout_value(name, typ))
            values = F.coalesce(values, F.array().cast(f"array<{typ}>"))
            arrays.append(F.concat(values, F.array_repeat(F.lit(0).cast(typ), pad)).alias(f"{ds}.{name}"))
        out = out.select(*[F.col(f"`{c}`") for c in out.columns if c != col], *arrays)
    return out.orderBy("ts", "example_id")


# --- the job -----------------------------------------------------------------------------

def _to_table(io, rows: DataFrame) -> DataFrame:
    """``rows`` in ``training_examples``' columns and types (missing ones NULL)."""
    target = io.read(TRAINING_EXAMPLES).schema
    have = set(rows.columns)
    return rows.select(*[(F.col(f.name) if f.name in have else F.lit(None)).cast(f.dataType).alias(f.name)
                         for f in target.fields])


def training_examples(io, registry: Registry, day: dt.date, *, source: str = "lake",
                      tenant: str | None = None, label_types: list[str] | None = None,
                      labels_table: str | None = None, lookback_days: int = 30, label_window_minutes: int = 30,
                      export_dir: str | None = None) -> dict[str, int]:
    """Build one UTC day's training examples from ``source`` and overwrite that day's
    partition of ``training_examples`` (for that source: the other path's rows stay), then
    export the day in the Arrow layout as Parquet under ``<export_dir>/<source>/day=<day>``.

    ``lake``: labels are the day's events of ``label_types`` (default: the registry's relevant
    types) or the rows of ``labels_table`` with ``ts`` in the day; sequences are the registry's
    datasets at their retention, or ``tenant``'s mix. ``served``: ``tenant``'s logged requests of
    the day, labelled by the engagements of the ``label_window_minutes`` after each.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if source == "served" and tenant is None:
        raise ValueError("source 'served' needs a tenant: its logged arrays have that tenant's sequence mix")
    if lookback_days <= 0 or label_window_minutes <= 0:
        raise ValueError(f"lookback_days ({lookback_days}) and label_window_minutes ({label_window_minutes}) "
                         "must be positive")
    label_types = list(label_types or registry.relevant_types())
    unknown = sorted(set(label_types) - set(registry.event_types))
    if unknown:
        raise ValueError(f"unknown label event types {unknown}; registered: {sorted(registry.event_types)}")
    lengths = dataset_lengths(registry, tenant)
    if source == "lake":
        # An experiment's dataset holds a rule's selection over a window, not the newest events
        # before a moment: the lake path cannot rebuild it (the served path has what was served).
        skipped = sorted(set(lengths) - set(registry.realtime_datasets()))
        if skipped:
            log.warning("training examples from the lake leave out experiment datasets %s of tenant %s",
                        skipped, tenant)
            lengths = {d: n for d, n in lengths.items() if d not in skipped}
        if not lengths:
            raise ValueError(f"tenant {tenant!r} reads only experiment datasets: use --source served")
    p = Progress("training_examples", io.metrics_dir, day=str(day), source=source, tenant=tenant or "*")
    start, end = T.day_bounds(day)
    lookback = dt.timedelta(days=lookback_days)
    window = dt.timedelta(minutes=label_window_minutes)
    if source == "lake":
        # Read and deduplicated once (the labels, the users' timelines and their events all come
        # from it), kept on disk: the lookback's events need not fit in memory.
        events = T.dedup_events(io.read(lake.RAW_EVENTS).where(T.in_range(start - lookback, end))) \
            .persist(StorageLevel.DISK_ONLY)
        p.stage("events", events.count())
        if labels_table:
            labels = table_labels(io.read(labels_table)).where(T.in_range(start, end, "ts"))
        else:
            labels = event_labels(events, label_types, start, end)
        rows = lake_examples(labels, events, io.read(lake.ITEM_FEATURES), registry, lengths,
                             io.feature_fields(), lookback, registry.tenants[tenant] if tenant else None)
    else:
        served = io.read(lake.SERVED_FEATURES).where(T.in_range(start, end, "served_at")
                                                      & (F.col("tenant") == tenant))
        events = T.dedup_events(io.read(lake.RAW_EVENTS).where(T.in_range(start, end + window)))
        rows = served_examples(served, events, registry, lengths, label_types, window)
    # Counted, written and exported from one copy on disk, not in the heap: a day's rows are
    # labels x N (11M rows from 150k events), which a driver's memory does not hold.
    rows = _to_table(io, rows.withColumn("created_at", F.current_timestamp())).persist(StorageLevel.DISK_ONLY)
    try:
        return _write(io, rows, p, source, day, lengths, export_dir, tenant if source == "served" else None)
    finally:
        rows.unpersist()
        events.unpersist()


def _write(io, rows: DataFrame, p: Progress, source: str, day: dt.date, lengths: Mapping[str, int],
           export_dir: str | None, tenant: str | None = None) -> dict[str, int]:
    """Replace the day's rows of ``source`` (and of ``tenant``: the served path runs once per
    tenant) in ``training_examples`` with ``rows``, export them."""
    start, end = T.day_bounds(day)
    examples = rows.select("example_id").distinct().count()
    p.stage("built", rows.count(), examples=examples)
    # The day's partition of the source, replaced in one commit (a re-run that finds no example empties it).
    partition = (F.col("source") == F.lit(source)) & T.in_range(start, end, "ts")
    if tenant is None:
        io.replace(TRAINING_EXAMPLES, rows, partition)
    else:  # the other tenants' served rows of the day stay, written back in the same commit
        io.replace(TRAINING_EXAMPLES, rows, partition & (F.col("tenant") == F.lit(tenant)), within=partition)
    p.figures["examples"] = int(examples)
    p.stage("written", int(examples))
    if export_dir:
        path = export_path(export_dir, source, day, tenant)
        ready = model_ready(rows, lengths)
        export_replace(io.spark, ready.coalesce(max(1, math.ceil(examples / 200_000))), path)
        p.stage("exported", int(examples), path=path)
    return p.done()


def export_replace(spark, df: DataFrame, path: str) -> None:
    """Write ``df`` as Parquet at ``path``, replacing what is there only once the new files are
    complete: they are written to a staging directory beside it, whose ``_`` prefix readers of the
    export skip (Spark, pyarrow datasets), then swapped in. A run that fails while writing leaves
    the previous export whole (``mode("overwrite")`` deleted it first). The swap is a delete and
    a rename, not atomic: a reader in between finds no export for the day (on S3 the rename
    copies, so longer), and a crash in between leaves the new files in the staging directory,
    named in the error; a re-run writes them again."""
    import uuid

    jvm = spark.sparkContext._jvm
    Path = jvm.org.apache.hadoop.fs.Path
    parent, _, leaf = path.rstrip("/").rpartition("/")
    staging = f"{parent}/_staging-{leaf}-{uuid.uuid4().hex[:12]}"
    target, staged = Path(path), Path(staging)
    fs = target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    try:
        df.write.parquet(staging)
    except Exception:
        if fs.exists(staged):
            fs.delete(staged, True)
        raise
    if fs.exists(target) and not fs.delete(target, True):
        raise OSError(f"could not remove the previous export {path}; the new one is at {staging}")
    if not fs.rename(staged, target):
        raise OSError(f"could not move the new export from {staging} to {path}")


def export_path(export_dir: str, source: str, day: dt.date, tenant: str | None = None) -> str:
    """Where a day's Parquet export goes (a directory of part files): ``<source>/day=<day>``, so
    reading ``<export_dir>/<source>`` gives every exported day with a ``day`` partition column
    (the source is a column of the files already). The served path's are per tenant, whose
    sequence mixes differ: ``served/<tenant>/day=<day>``."""
    where = source if tenant is None else f"{source}/{tenant}"
    return f"{export_dir.rstrip('/')}/{where}/day={day.isoformat()}"
