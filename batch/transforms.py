"""Pure DataFrame transforms of the offline jobs: no reads, no writes, no settings.

Every job in ``batch.jobs`` is "read tables → these functions → write", so each step is
tested on small in-memory DataFrames in a real local Spark session.
"""
from __future__ import annotations

import datetime as dt
from typing import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from usersignals.registry import Registry, Tenant

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
        datasets = [ds.name for ds in registry.realtime_datasets().values() if f in registry.indexing_fields(ds)]
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


def select_events(events: DataFrame, rule, n: int, name: str = "") -> DataFrame:
    """Each user's ``n`` events per dataset chosen by a selection rule (``batch.selection``):
    ``rule(events)`` adds ``score``; the highest scores are kept (ties: newest, then event_id),
    with their ``rank`` (1 = best). ``name`` names the rule in errors."""
    scored = rule(events)
    if "score" not in scored.columns:
        raise ValueError(f"selection rule {name or rule!r} returned no 'score' column; columns: {scored.columns}")
    scored = scored.withColumn("score", F.col("score").cast("double"))
    w = Window.partitionBy("dataset", "user_id").orderBy(
        F.col("score").desc_nulls_last(), F.col("event_time").desc(), F.col("event_id").desc())
    return scored.withColumn("rank", F.row_number().over(w)).where(F.col("rank") <= n)


def selection_metrics(selected: DataFrame, relevant: DataFrame, users: DataFrame, k: int) -> DataFrame:
    """Recall@k and NDCG@k of each rule's selection against the next day's engagement.

    ``selected``: (rule, user_id, rank, item_id), rank 1 = the rule's best event. The ranking
    scored is the user's selected events in rank order, item ids deduplicated (an item's place
    is that of its best-ranked event), cut at ``k``. ``relevant``: distinct (user_id, item_id)
    engaged with the next day. ``users``: the users evaluated, the same for every rule (users with
    events in the window and a relevant item the next day); a rule that selects nothing for one
    scores 0 there. Recall = hits / relevant items; NDCG = sum over hits of 1/log2(place+1) over
    the ideal sum for min(relevant, k) hits (as ``batch.retrain.recall_ndcg``).
    Returns (rule, users, recall_at_k, ndcg_at_k)."""
    first = selected.groupBy("rule", "user_id", "item_id").agg(F.min("rank").alias("_best"))
    w = Window.partitionBy("rule", "user_id").orderBy("_best", "item_id")
    ranked = first.withColumn("place", F.row_number().over(w)).where(F.col("place") <= k)
    n_rel = relevant.groupBy("user_id").agg(F.count("*").alias("n_rel"))
    base = users.select("user_id").distinct().join(n_rel, "user_id")
    hits = (ranked.join(relevant, ["user_id", "item_id"])
            .groupBy("rule", "user_id").agg(F.count("*").alias("hits"),
                                            F.sum(1.0 / F.log2(F.col("place") + 1)).alias("dcg")))
    rules = selected.select("rule").distinct()
    ideal = F.aggregate(F.sequence(F.lit(1), F.least(F.col("n_rel"), F.lit(k))), F.lit(0.0),
                        lambda acc, i: acc + 1.0 / F.log2(i + 1))
    per_user = (rules.crossJoin(base).join(hits, ["rule", "user_id"], "left")
                .select("rule", "user_id", (F.coalesce("hits", F.lit(0)) / F.col("n_rel")).alias("recall"),
                        (F.coalesce("dcg", F.lit(0.0)) / ideal).alias("ndcg")))
    return per_user.groupBy("rule").agg(F.count("*").alias("users"), F.avg("recall").alias("recall_at_k"),
                                        F.avg("ndcg").alias("ndcg_at_k"))


def tenant_filtered(rows: DataFrame, tenant: Tenant, key: str, newest: list[Column]) -> DataFrame:
    """Sequence rows (``dataset``, ``item_id``, ``event_time``, ``ts``, ``surface``, ``dwell_ms``) kept
    by ``tenant``'s filters as ``serving.filtering`` applies them: excluded items, max age before
    ``ts``, surfaces, minimum dwell per dataset, and the newest (by ``newest``) event per item
    within each ``key`` and dataset. The skew job and the training examples rebuild with this."""
    f = tenant.filters
    if f.exclude_items:
        rows = rows.where(~F.col("item_id").isin(list(f.exclude_items)))
    if f.max_age_s:
        rows = rows.where(F.col("event_time") >= F.col("ts") - F.expr(f"INTERVAL {int(f.max_age_s)} SECONDS"))
    if f.surfaces:
        rows = rows.where(F.col("surface").isin(list(f.surfaces)))
    for d, min_dwell in f.min_dwell_ms.items():
        rows = rows.where((F.col("dataset") != d) | (F.coalesce(F.col("dwell_ms"), F.lit(0)) >= min_dwell))
    if f.dedup_items:
        per_item = Window.partitionBy(key, "dataset", "item_id").orderBy(*newest)
        rows = rows.withColumn("_n", F.row_number().over(per_item)).where("_n = 1").drop("_n")
    return rows
