"""Online/offline feature skew: what the API served, against what the lake says it should have served.

For each tenant, a deterministic sample of one UTC day's ``served_features`` (the requests whose
``xxhash64(request_id)`` ranks lowest, up to ``sample`` requests, every logged user of each) is
rebuilt from the lake **as the API builds it** at the request's ``served_at``:

- the user's newest events of each of the tenant's datasets strictly before ``served_at`` (from
  deduplicated ``raw_events``, at most ``lookback_days`` back), as many as the API fetches from
  the KV layer (``Registry.fetch_limits``: the tenant's length, twice it when
  the tenant has filters, at most the retention);
- the tenant's filters applied in the API's order (``serving.filtering``: excluded items, max age,
  surfaces, min dwell per dataset, newest event per item when ``dedup_items``), then cut to the
  tenant's length: the comparison is fair to a filtering tenant, so what remains is skew. A
  request's own ``exclude_items`` are not logged, and count as skew where they dropped an event;
- item features as of ``served_at``: the newest ``item_features`` version with ``updated_at <=
  served_at`` (what ``batch.training`` gives a model for the same moment), a field set on the
  datasets whose indexing-time enrichments store it, and on all of the tenant's datasets for its
  serving-time enrichments. ``embedding`` is what the API joins: the item's embedding of the model
  version that was published when it served (the record's ``embedding_version``, from
  ``item_embeddings``) where that version has one, else ``item_features``' column.

It is compared **per feature** (Chronon's consistency job measures skew that way, not per event
id): per (tenant, dataset, feature), position by position along each sequence (rank 1 = newest
against rank 1), so a missing or extra event shows in every position after it, as it does to a
model. The features are what the tenant's logged format holds:

- ``arrow`` (model-ready arrays): ``item_id`` (the item hash), ``type_id``, ``age_s``,
  ``dwell_ms`` (0 when unknown, as served), ``embedding`` (when the tenant serves it; zeros for an
  item without one, as served);
- ``json`` (events): ``event_id``, ``item_id``, ``event_time`` (epoch ms), ``surface``,
  ``dwell_ms``, ``query``, and each item feature the events carry (``category``, ``popularity``...).

Counts: a position both sides have, with a value on both, is ``compared`` (and ``mismatched``
when the values differ); a value only the lake has is ``missing_online``, only the log has
``missing_offline`` (an absent event: every feature of it). No value on either side is agreement
and is not counted. ``mismatch_rate = mismatched / compared``. What "equal" means:
``values_equal`` — strings and integers exactly (item hashes are 63-bit: never as floats); a
float with ``math.isclose`` at the feature's tolerance (``TOLERANCES``: ``age_s`` within 1 s, since
float32 keeps a 90-day age to 0.5 s and ``served_at`` is logged a few ms after the API read its
clock; any other float within 1e-6 relative or absolute, float32's round trip); arrays (the
embedding) element-wise so, and of the same length.

Not compared: an experiment's datasets (``exp_<experiment>_<rule>``, a rule's selection rather
than the newest events), aggregate views (computed from the stream's decayed state, not rebuilt here), and
the tenant's config as it was: the registry's tenant is the reference, so a tenant changed at
runtime (``PUT /v1/tenants``) shows the change as skew until the registry file has it (the table
keeps the config versions compared).

The comparison (``compare_request`` and below) is plain Python, run on the executors per
sampled request; ``feature_skew`` is the job: it writes its (day, tenants, datasets) rows of
``feature_skew`` and the gauges ``usersignals_feature_skew_*{tenant,dataset,feature}``.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from batch import transforms as T
from batch.progress import Progress
from batch.training import item_hash
from usersignals import lake
from usersignals.registry import Registry, Tenant

FORMATS = ("arrow", "json")
# What each logged format holds per event, compared in this order (item features follow for json).
ARROW_FEATURES = ("item_id", "type_id", "age_s", "dwell_ms")
JSON_FEATURES = ("event_id", "item_id", "event_time", "surface", "dwell_ms", "query")
OUTCOMES = ("compared", "mismatched", "missing_online", "missing_offline")


@dataclass(frozen=True)
class Tolerance:
    abs: float = 1e-6
    rel: float = 1e-6


DEFAULT_TOLERANCE = Tolerance()
# age_s: float32 holds a 90-day age (7.8e6 s) to 0.5 s, and served_at is when the log record was
# made, a few ms after the API read the clock it computed the ages from.
TOLERANCES = {"age_s": Tolerance(abs=1.0, rel=0.0)}


def values_equal(online, offline, tol: Tolerance = DEFAULT_TOLERANCE) -> bool:
    """Whether two values of one feature agree: integers and strings exactly, floats within
    ``tol``, lists element-wise (same length). ``None`` equals only ``None``."""
    if online is None or offline is None:
        return online is None and offline is None
    if isinstance(online, (list, tuple)) or isinstance(offline, (list, tuple)):
        return (isinstance(online, (list, tuple)) and isinstance(offline, (list, tuple))
                and len(online) == len(offline)
                and all(values_equal(a, b, tol) for a, b in zip(online, offline)))
    numbers = (int, float)
    if isinstance(online, numbers) and isinstance(offline, numbers) \
            and not isinstance(online, bool) and not isinstance(offline, bool):
        if isinstance(online, int) and isinstance(offline, int):
            return online == offline
        return math.isclose(online, offline, rel_tol=tol.rel, abs_tol=tol.abs)
    return online == offline


def compare_sequences(online: list[dict], offline: list[dict], features: Iterable[str],
                      counts: dict[str, list[int]]) -> None:
    """Adds to ``counts[feature]`` ([compared, mismatched, missing_online, missing_offline]) the
    comparison of two sequences of events (feature -> value), position by position."""
    for pos in range(max(len(online), len(offline))):
        on = online[pos] if pos < len(online) else None
        off = offline[pos] if pos < len(offline) else None
        for f in features:
            c = counts.setdefault(f, [0, 0, 0, 0])
            a = None if on is None else on.get(f)
            b = None if off is None else off.get(f)
            if a is None and b is None:
                continue
            if a is None:
                c[2] += 1
            elif b is None:
                c[3] += 1
            else:
                c[0] += 1
                c[1] += not values_equal(a, b, TOLERANCES.get(f, DEFAULT_TOLERANCE))


def arrow_online(record: Mapping, dataset: str) -> list[dict]:
    """The events of one dataset in a logged Arrow-format record (``<ds>.<field>`` arrays): each
    position whose ``mask`` is 1, as feature -> value."""
    mask = record.get(f"{dataset}.mask") or []
    cols = {f: record.get(f"{dataset}.{'item_hash' if f == 'item_id' else f}") or [] for f in ARROW_FEATURES}
    emb = record.get(f"{dataset}.embedding")
    out = []
    for pos, m in enumerate(mask):
        if m != 1:
            continue
        ev = {f: (v[pos] if pos < len(v) else None) for f, v in cols.items()}
        if emb is not None:
            ev["embedding"] = emb[pos] if pos < len(emb) else None
        out.append(ev)
    return out


def arrow_offline(events: list[dict], served_ms: int, type_id: int, embedding_dim: int | None) -> list[dict]:
    """The lake's events of one dataset as the Arrow layout would hold them (``serving.featurize``):
    the item's hash, the type id, the age at ``served_ms``, dwell 0 when unknown, and (when
    ``embedding_dim``) the item's embedding, zeros when it has none of that size."""
    out = []
    for e in events:
        ev = {"item_id": item_hash(e["item_id"]), "type_id": type_id, "age_s": (served_ms - e["ts"]) / 1000.0,
              "dwell_ms": e.get("dwell_ms") or 0}
        if embedding_dim is not None:
            vec = (e.get("features") or {}).get("embedding")
            ev["embedding"] = list(vec) if vec is not None and len(vec) == embedding_dim else [0.0] * embedding_dim
        out.append(ev)
    return out


def json_events(events: list[dict]) -> list[dict]:
    """Events as the JSON format serves them (the KV layer's stored form) -> feature -> value;
    ``ts`` is ``event_time``, item features are flattened."""
    out = []
    for e in events:
        ev = {f: e.get("ts" if f == "event_time" else f) for f in JSON_FEATURES}
        ev.update({f: v for f, v in (e.get("features") or {}).items()})
        out.append(ev)
    return out


def compare_request(fmt: str, served: Mapping, offline: Mapping[str, list[dict]], lengths: Mapping[str, int],
                    type_ids: Mapping[str, int], served_ms: int, feature_fields: Mapping[str, tuple[str, ...]],
                    embedding_dim: int | None = None) -> dict[tuple[str, str], list[int]]:
    """One logged (request, user) against its lake rebuild: (dataset, feature) -> [compared,
    mismatched, missing_online, missing_offline].

    ``served``: the logged features (an Arrow record of arrays, or the JSON format's user object
    with ``sequences``); ``offline``: dataset -> the lake's events newest first, in the KV layer's
    stored form (``event_id``, ``item_id``, ``ts`` ms, ``surface``, ``dwell_ms``, ``query``,
    ``features``); ``feature_fields``: dataset -> the item features its events carry (json);
    ``embedding_dim``: the Arrow embedding's size when the tenant serves embeddings."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown served format {fmt!r}; expected one of {FORMATS}")
    out: dict[tuple[str, str], list[int]] = {}
    for ds, length in lengths.items():
        counts: dict[str, list[int]] = {}
        off = list(offline.get(ds) or [])[:length]
        if fmt == "arrow":
            features = ARROW_FEATURES + (("embedding",) if embedding_dim is not None else ())
            compare_sequences(arrow_online(served, ds)[:length],
                              arrow_offline(off, served_ms, type_ids[ds], embedding_dim), features, counts)
        else:
            on = ((served.get("sequences") or {}).get(ds) or [])[:length]
            compare_sequences(json_events(on), json_events(off), JSON_FEATURES + tuple(feature_fields.get(ds, ())),
                              counts)
        for f, c in counts.items():
            out[(ds, f)] = c
    return out


def mismatch_rate(compared: int, mismatched: int) -> float | None:
    """mismatched / compared; None when nothing was compared (no rate, rather than a perfect one)."""
    return mismatched / compared if compared else None


# --- the lake's side (Spark) -----------------------------------------------------------

def sample_requests(served: DataFrame, sample: int) -> DataFrame:
    """Per tenant, the ``sample`` requests whose ``xxhash64(request_id)`` is lowest (ties by id),
    every logged user of each: the same sample on every re-run, spread over the day."""
    if sample <= 0:
        raise ValueError(f"sample must be a positive number of requests, got {sample}")
    w = Window.partitionBy("tenant").orderBy(F.xxhash64("request_id"), "request_id")
    return served.withColumn("_n", F.dense_rank().over(w)).where(F.col("_n") <= sample).drop("_n")


def fetch_limits(tenant: Tenant, registry: Registry, datasets: Iterable[str]) -> dict[str, int]:
    """What the API reads from the KV layer per dataset before filtering (``Registry.fetch_limits``,
    the rule ``serving.retrieve`` applies), for ``datasets`` of the tenant's mix."""
    limits = registry.fetch_limits(tenant)
    return {d: limits[d] for d in datasets}


def served_view(requests: DataFrame, events: DataFrame, item_features: DataFrame, registry: Registry,
                tenant: Tenant, datasets: list[str], lookback: dt.timedelta,
                item_embeddings: DataFrame | None = None) -> DataFrame:
    """Per request (``_key``, ``user_id``, ``ts``, ``_emb_version``): the events of each of
    ``datasets`` the API would have served ``tenant`` at ``ts`` from the lake (see the module
    doc), one row each with ``dataset``, ``rank`` (1 = newest) and the item features as of
    ``ts``; ``embedding`` overlaid by ``item_embeddings`` of the request's ``_emb_version``."""
    fetch = fetch_limits(tenant, registry, datasets)
    rows = [(d, registry.datasets[d].event_type, fetch[d], tenant.sequences[d]) for d in datasets]
    spec = events.sparkSession.createDataFrame(rows, "dataset string, event_type string, _fetch int, _limit int")
    ev = events.select(F.col("user_id").alias("_u"), *[c for c in T.EVENT_COLUMNS if c != "user_id"]) \
        .join(F.broadcast(spec), "event_type")
    secs = int(lookback.total_seconds())
    cond = ((F.col("user_id") == F.col("_u")) & (F.col("event_time") < F.col("ts"))
            & (F.col("event_time") >= F.col("ts") - F.expr(f"INTERVAL {secs} SECONDS")))
    newest = [F.col("event_time").desc(), F.col("event_id").desc()]
    w = Window.partitionBy("_key", "dataset").orderBy(*newest)
    out = requests.join(ev, cond).withColumn("rank", F.row_number().over(w)).where(F.col("rank") <= F.col("_fetch"))
    out = T.tenant_filtered(out, tenant, "_key", newest)
    out = out.withColumn("rank", F.row_number().over(w)).where(F.col("rank") <= F.col("_limit"))
    # Item features valid at ts, on the datasets whose events carry them.
    fields = tuple(registry.features)
    feats = item_features.select(F.col("item_id").alias("_i"), F.col("updated_at").alias("_at"),
                                 *[F.col(x).alias(f"_f_{x}") for x in fields])
    fw = Window.partitionBy("_key", "dataset", "rank").orderBy(F.col("_at").desc_nulls_last())
    out = out.join(feats, (F.col("item_id") == F.col("_i")) & (F.col("_at") <= F.col("ts")), "left") \
        .withColumn("_v", F.row_number().over(fw)).where("_v = 1")
    if item_embeddings is not None and "embedding" in fields:
        # As serving.enrich overlays them: the published version's embedding wins where it has one.
        published = item_embeddings.select(F.col("item_id").alias("_pi"), F.col("model_version").alias("_pv"),
                                           F.col("embedding").alias("_pe"))
        out = out.join(published, (F.col("item_id") == F.col("_pi")) & (F.col("_emb_version") == F.col("_pv")),
                       "left").withColumn("_f_embedding", F.coalesce(F.col("_pe"), F.col("_f_embedding")))
    carried = carried_fields(registry, tenant, datasets)
    for x in fields:
        out = out.withColumn(x, F.when(F.col("dataset").isin([d for d in datasets if x in carried[d]]),
                                       F.col(f"_f_{x}")))
    return out.select("_key", "dataset", "rank", "event_id", "item_id", "event_time",
                      F.unix_millis("event_time").alias("ts_ms"), "surface", "dwell_ms", "query", *fields)


def carried_fields(registry: Registry, tenant: Tenant, datasets: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """dataset -> the item features its served events carry: its indexing-time enrichments'
    fields (stored with the event), then the tenant's serving-time enrichments' fields."""
    serving = registry.fields_of(tenant.enrichments)
    return {d: tuple(dict.fromkeys(registry.indexing_fields(registry.datasets[d]) + serving)) for d in datasets}


def _stored_form(row, fields: tuple[str, ...]) -> dict:
    """A lake event row as the KV layer stores it (``usersignals.events.encode_stored``)."""
    e = {"event_id": row["event_id"], "item_id": row["item_id"], "ts": row["ts_ms"]}
    for k in ("surface", "dwell_ms", "query"):
        if row[k] is not None:
            e[k] = row[k]
    e["features"] = {f: (list(row[f]) if isinstance(row[f], (list, tuple)) else row[f])
                     for f in fields if row[f] is not None}
    return e


def tally(requests: DataFrame, offline: DataFrame, registry: Registry, tenant: Tenant,
          datasets: list[str]) -> list[tuple[str, str, list[int]]]:
    """Runs ``compare_request`` for every sampled (request, user) and sums the counts:
    [(dataset, feature, [compared, mismatched, missing_online, missing_offline])]."""
    carried = carried_fields(registry, tenant, datasets)
    fields = tuple(registry.features)
    lengths = {d: tenant.sequences[d] for d in datasets}
    type_ids = {d: registry.event_types[registry.datasets[d].event_type].id for d in datasets}
    embedding_dim = registry.model.embedding_dim if "embedding" in registry.fields_of(tenant.enrichments) else None
    per_key = offline.groupBy("_key").agg(F.collect_list(F.struct(*offline.columns)).alias("_events"))
    joined = requests.join(per_key, "_key", "left").select("_key", F.unix_millis("ts").alias("_served_ms"), "format",
                                                           "features", "_events")

    def compare(row):
        by_ds: dict[str, list] = {}
        for e in sorted(row["_events"] or [], key=lambda r: (r["dataset"], r["rank"])):
            by_ds.setdefault(e["dataset"], []).append(_stored_form(e, fields))
        served = json.loads(row["features"]) if row["features"] else {}
        fmt = "json" if row["format"] == "json" else "arrow"   # as batch.training reads the log
        result = compare_request(fmt, served, by_ds, lengths, type_ids, row["_served_ms"],
                                 {d: tuple(f for f in carried[d]) for d in datasets},
                                 embedding_dim if any(f"{d}.embedding" in served for d in datasets) else None)
        return list(result.items())

    summed = joined.rdd.flatMap(compare).reduceByKey(lambda a, b: [x + y for x, y in zip(a, b)]).collect()
    return sorted((ds, f, c) for (ds, f), c in summed)


# --- the job -----------------------------------------------------------------------------

def feature_skew(io, registry: Registry, day: dt.date, *, tenant: str | None = None,
                 event_types: list[str] | None = None, sample: int = 2000, lookback_days: int = 90) -> dict:
    """Measure one UTC day's skew per (tenant, dataset, feature) and replace that day's rows of
    those tenants and datasets in ``feature_skew``; ``event_types`` limits it to their datasets
    (the daily re-enrichment of a type runs it for that type's). Writes the gauges
    ``usersignals_feature_skew_ratio``/``_values`` to the job's metrics file."""
    from prometheus_client import Gauge

    if tenant is not None and tenant not in registry.tenants:
        raise ValueError(f"unknown tenant {tenant!r}; registered: {sorted(registry.tenants)}")
    unknown = sorted(set(event_types or ()) - set(registry.event_types))
    if unknown:
        raise ValueError(f"unknown event types {unknown}; registered: {sorted(registry.event_types)}")
    if lookback_days <= 0:
        raise ValueError(f"lookback_days must be positive, got {lookback_days}")
    tenants: dict[str, tuple[Tenant, list[str]]] = {}
    for name in ([tenant] if tenant else sorted(registry.tenants)):
        t = registry.tenants[name]
        # An experiment's dataset holds a rule's selection, not the newest events: not rebuilt here.
        ds = [d for d in t.sequences if registry.datasets[d].experiment is None
              and (not event_types or registry.datasets[d].event_type in event_types)]
        if ds:
            tenants[name] = (t, ds)
    if not tenants:
        raise ValueError(f"no tenant reads a dataset of event types {event_types} (tenant {tenant!r}): nothing to "
                         "compare")
    # One metrics file per scope: the re-enrichment of each type runs its own, which must not
    # overwrite another type's gauges.
    job = "feature_skew" + "".join(f"_{e}" for e in sorted(event_types or ()))
    p = Progress(job, io.metrics_dir, day=str(day), tenant=tenant or "*")
    ratio = Gauge("usersignals_feature_skew_ratio", "Share of compared served feature values that differ from "
                  "the lake's rebuild of the same request (batch.skew), per tenant, dataset and feature.",
                  ["tenant", "dataset", "feature"], registry=p.registry)
    values = Gauge("usersignals_feature_skew_values", "Served feature values the skew job compared, found "
                   "different, or found on one side only (outcome: compared, mismatched, missing_online, "
                   "missing_offline).", ["tenant", "dataset", "feature", "outcome"], registry=p.registry)
    start, end = T.day_bounds(day)
    lookback = dt.timedelta(days=lookback_days)
    served = io.read(lake.SERVED_FEATURES).where(T.in_range(start, end, "served_at")
                                                 & F.col("tenant").isin(list(tenants)))
    sampled = sample_requests(served, sample).select(
        F.concat_ws(":", "request_id", "user_id").alias("_key"), "request_id", "tenant", "config_version",
        "user_id", F.col("served_at").alias("ts"), "format", "features",
        F.get_json_object("features", "$.embedding_version").alias("_emb_version")).localCheckpoint(eager=True)
    users = sampled.select("user_id").distinct()
    events = T.dedup_events(io.read(lake.RAW_EVENTS).where(T.in_range(start - lookback, end))) \
        .join(F.broadcast(users), "user_id", "left_semi")
    item_features = io.read(lake.ITEM_FEATURES)
    # Only the model versions the sampled requests were served with (a partition each).
    model_versions = sorted(r[0] for r in sampled.select("_emb_version").distinct().collect() if r[0] is not None)
    item_embeddings = io.read(lake.ITEM_EMBEDDINGS).where(F.col("model_version").isin(model_versions)) \
        if model_versions else None
    computed_at = dt.datetime.now(dt.timezone.utc)
    rows = []
    for name, (t, datasets) in tenants.items():
        requests = sampled.where(F.col("tenant") == name)
        stats = requests.agg(F.countDistinct("request_id").alias("n"),
                             F.sort_array(F.collect_set("config_version")).alias("v")).first()
        if not stats["n"]:
            p.stage(f"{name}.requests", 0)
            continue
        offline = served_view(requests.select("_key", "user_id", "ts", "_emb_version"), events, item_features,
                              registry, t, datasets, lookback, item_embeddings)
        versions = ",".join(str(v) for v in stats["v"])
        for ds, feature, (compared, mismatched, missing_on, missing_off) in tally(requests, offline, registry, t,
                                                                                 datasets):
            rows.append((day, name, ds, feature, int(stats["n"]), compared, mismatched, missing_on, missing_off,
                         mismatch_rate(compared, mismatched), versions, computed_at))
            for outcome, n in zip(OUTCOMES, (compared, mismatched, missing_on, missing_off)):
                values.labels(name, ds, feature, outcome).set(n)
            if compared:
                ratio.labels(name, ds, feature).set(mismatch_rate(compared, mismatched))
        p.stage(f"{name}.requests", int(stats["n"]))
    target = io.read(lake.FEATURE_SKEW)
    # A re-run replaces the day's rows of what it measured (and a day without requests empties
    # them); the day's rows of other tenants and datasets (the same partition) stay.
    the_day = F.col("day") == F.lit(day)
    measured = the_day & F.col("tenant").isin(sorted(tenants)) \
        & F.col("dataset").isin(sorted({d for _, ds in tenants.values() for d in ds}))
    io.replace(lake.FEATURE_SKEW, io.spark.createDataFrame(rows, target.schema), measured, within=the_day)
    p.stage("written", len(rows))
    worst = max((r for r in rows if r[9] is not None), key=lambda r: r[9], default=None)
    p.figures["features"] = len(rows)
    if worst is not None:
        p.figures["worst"] = f"{worst[1]}/{worst[2]}/{worst[3]}={worst[9]:.4f}"
    return p.done()
