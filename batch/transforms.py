"""Pure DataFrame transforms of the offline jobs: no reads, no writes, no settings.

Every job in ``batch.jobs`` is "read tables → these functions → write", so each step is
tested on small in-memory DataFrames in a real local Spark session.
"""
from __future__ import annotations

import datetime as dt
from typing import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from usersignals.registry import Registry

EVENT_COLUMNS = ("event_id", "user_id", "event_type", "item_id", "event_time", "surface", "dwell_ms", "query")


def dedup_events(events: DataFrame, order_by: str = "ingested_at") -> DataFrame:
    """One row per event_id (at-least-once replays and producer retries removed).

    Keeps the first-received copy when ``order_by`` exists, else an arbitrary one.
    """
    if order_by not in events.columns:
        return events.dropDuplicates(["event_id"])
    w = Window.partitionBy("event_id").orderBy(F.col(order_by).asc_nulls_last())
    return events.withColumn("_n", F.row_number().over(w)).where("_n = 1").drop("_n")


def latest_features(item_features: DataFrame) -> DataFrame:
    """The newest row per item (item_features keeps every version)."""
    w = Window.partitionBy("item_id").orderBy(F.col("updated_at").desc())
    return item_features.withColumn("_n", F.row_number().over(w)).where("_n = 1").drop("_n", "updated_at")


def by_event_type(values: Mapping[str, object]) -> Column:
    """A column mapping each row's event_type to ``values[event_type]`` (null for other types)."""
    expr = None
    for et, v in values.items():
        expr = (F.when if expr is None else expr.when)(F.col("event_type") == et, F.lit(v))
    return expr if expr is not None else F.lit(None)


def dataset_of(registry: Registry) -> Column:
    """event_type → the real-time dataset that indexes it (null for unindexed types)."""
    return by_event_type({et: registry.dataset_for_type(et).name for et in registry.event_types}).cast("string")


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a UTC day."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    return start, start + dt.timedelta(days=1)


def in_range(start: dt.datetime, end: dt.datetime, column: str = "event_time") -> Column:
    """``start <= column < end``."""
    return (F.col(column) >= F.lit(start)) & (F.col(column) < F.lit(end))


def enrich(events: DataFrame, features: DataFrame, registry: Registry, feature_fields: tuple[str, ...],
           enriched_by: str) -> DataFrame:
    """Events joined with item features, one column per field in ``feature_fields``.

    A field is set only on events whose dataset stores it (its indexing-time enrichments),
    as the stream does, so the daily recomputation is comparable with what was streamed.
    """
    feats = features.select("item_id", *[F.col(f).alias(f"_f_{f}") for f in feature_fields])
    out = events.select(*EVENT_COLUMNS).withColumn("dataset", dataset_of(registry)).where("dataset IS NOT NULL")
    out = out.join(feats, "item_id", "left")
    for f in feature_fields:
        datasets = [ds.name for ds in registry.datasets.values() if f in registry.indexing_fields(ds)]
        out = out.withColumn(f, F.when(F.col("dataset").isin(datasets), F.col(f"_f_{f}"))).drop(f"_f_{f}")
    return (out.withColumn("indexed_at", F.current_timestamp())
               .withColumn("enriched_by", F.lit(enriched_by))
               .select(*EVENT_COLUMNS, "dataset", "indexed_at", "enriched_by", *feature_fields))


def last_n(events: DataFrame, retention: Mapping[str, int], order: Column | None = None) -> DataFrame:
    """Each user's first ``retention[dataset]`` events per dataset by ``order`` (default newest
    first), with their ``rank`` (1 = first)."""
    order = order if order is not None else F.col("event_time").desc()
    limits = events.sparkSession.createDataFrame(list(retention.items()), "dataset string, _limit int")
    w = Window.partitionBy("dataset", "user_id").orderBy(order, F.col("event_id").desc())
    return (events.join(F.broadcast(limits), "dataset")
                  .withColumn("rank", F.row_number().over(w))
                  .where(F.col("rank") <= F.col("_limit")).drop("_limit"))


def stored_payload(events: DataFrame, feature_fields: tuple[str, ...]) -> DataFrame:
    """The KV layer's record for each event: ``dataset, user_id, event_id, ts, payload``.

    ``payload`` is the JSON the streaming indexer stores (``usersignals.events.encode_stored``):
    event_id, item_id, ts, the optional fields that are set, and the features that are set.
    """
    features = F.struct(*[F.col(f) for f in feature_fields]) if feature_fields else F.struct()
    ts = F.unix_millis(F.col("event_time"))
    body = F.struct(F.col("event_id"), F.col("item_id"), ts.alias("ts"), F.col("surface"), F.col("dwell_ms"),
                    F.col("query"), features.alias("features"))
    return events.select("dataset", "user_id", "event_id", ts.alias("ts"),
                         F.to_json(body, {"ignoreNullFields": "true"}).alias("payload"))


def needs_repair(recomputed: DataFrame, streamed: DataFrame, feature_fields: tuple[str, ...]) -> DataFrame:
    """Recomputed events the stream missed (``reason='missing'``) or enriched differently
    (``'mis_enriched'``): what the daily job rewrites in the KV layer."""
    s = streamed.select("event_id", *[F.col(f).alias(f"_s_{f}") for f in feature_fields]) \
        .dropDuplicates(["event_id"]).withColumn("_streamed", F.lit(True))
    joined = recomputed.join(s, "event_id", "left")
    differs = F.lit(False)
    for f in feature_fields:
        differs = differs | ~F.col(f).eqNullSafe(F.col(f"_s_{f}"))
    reason = F.when(F.col("_streamed").isNull(), "missing").when(differs, "mis_enriched")
    return (joined.withColumn("reason", reason).where("reason IS NOT NULL")
                  .drop("_streamed", *[f"_s_{f}" for f in feature_fields]))


def select_events(events: DataFrame, rule: str, n: int, user_vectors: DataFrame | None = None) -> DataFrame:
    """An alternative selection of each user's ``n`` events per dataset, for experiments.

    ``rule``: ``last`` (newest n, the production rule), ``dwell`` (longest dwell first,
    newest on ties), ``similarity`` (embedding closest to the user's mean item embedding;
    needs an ``embedding`` column). Adds ``score`` and ``rank``.
    """
    if rule == "last":
        scored = events.withColumn("score", F.unix_millis("event_time").cast("double"))
    elif rule == "dwell":
        scored = events.withColumn("score", F.coalesce(F.col("dwell_ms"), F.lit(0)).cast("double"))
    elif rule == "similarity":
        if "embedding" not in events.columns:
            raise ValueError("rule 'similarity' needs an embedding column on the events")
        mean = (events.where("embedding IS NOT NULL")
                .select("user_id", "dataset", F.posexplode("embedding").alias("i", "v"))
                .groupBy("user_id", "dataset", "i").agg(F.avg("v").alias("m"))
                .groupBy("user_id", "dataset").agg(F.sort_array(F.collect_list(F.struct("i", "m"))).alias("c")))
        dot = F.aggregate(F.arrays_zip(F.col("embedding"), F.col("c.m")), F.lit(0.0),
                          lambda acc, x: acc + F.coalesce(x["embedding"] * x["m"], F.lit(0.0)))
        scored = events.join(mean, ["user_id", "dataset"], "left").withColumn("score", F.coalesce(dot, F.lit(0.0))) \
            .drop("c")
    else:
        raise ValueError(f"unknown selection rule {rule!r}; expected last, dwell or similarity")
    limits = {r["dataset"]: n for r in scored.select("dataset").distinct().collect()}
    if not limits:
        return scored.withColumn("rank", F.lit(0)).limit(0)
    return last_n(scored, limits, order=F.col("score").desc())
