"""The lake path's selection (batch.training.sequences_before, features_as_of) on real Spark, held
to the rule written out plainly in Python: for each label, its user's events of each dataset
with ts - lookback <= event_time < ts, newest first (equal times: the greater event id first),
the first N; with a tenant, of the newest events the API fetches (N, twice N when its filters can
drop events, at most the retention) those its filters keep, newest per item, the first N. Random timelines on a coarse clock (many events at a label's ts and at the lookback's
edge), small retentions so the caps bite; no catalog, DataFrames in and out."""
import dataclasses
import datetime as dt
import random

import pytest
from pyspark.sql import functions as F

from batch import training
from usersignals.registry import Filters, load_registry

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 20, 12, tzinfo=UTC)
LOOKBACK = dt.timedelta(minutes=30)
TYPES = {"click": "clicks", "repin": "repins", "closeup": "closeups"}


@pytest.fixture(scope="module")
def spark(tmp_path_factory, new_lake):
    from batch.session import spark_session
    from iceberg_schemas.migrate import migrate
    from usersignals import lake

    settings = new_lake(tmp_path_factory.mktemp("selection"))
    migrate(lake.load_catalog(settings), settings, load_registry())   # the session's default catalog is the lake's
    session = spark_session(settings, "test-training-selection")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def registry():
    """The registry with retentions small enough that the events before a label exceed them, yet
    above the API's fetch window of the tenant below (twice its lengths)."""
    reg = load_registry()
    retention = {"clicks": 9, "repins": 9, "closeups": 9}
    return dataclasses.replace(reg, datasets={d: dataclasses.replace(ds, retention=retention.get(d, ds.retention))
                                              for d, ds in reg.datasets.items()})


def timeline(seed: int):
    """Events and labels of 4 users on a 1-minute clock over 70 minutes: ties everywhere."""
    rng = random.Random(seed)
    events, labels = [], []
    for u in ("u1", "u2", "u3", "u4"):
        for k in range(rng.randrange(0, 60)):
            at = T0 + dt.timedelta(minutes=rng.randrange(0, 70))
            events.append((f"{u}-e{rng.randrange(10**6):06d}-{k}", u, rng.choice(list(TYPES)),
                           rng.choice(["i0", "i1", "i2", "i3", None]), at, rng.choice(["home", "search", None]),
                           rng.choice([None, 0, 500, 1500])))
        for k in range(3):
            labels.append((f"{u}-l{k}", u, T0 + dt.timedelta(minutes=rng.randrange(30, 71)), "click"))
    labels.append(("nobody-l0", "nobody", T0 + dt.timedelta(minutes=40), "click"))
    return events, labels


def expected(events, labels, registry, lengths, tenant=None, window=None):
    """The selection, one label and dataset at a time, as the docstring above states it.
    ``window(dataset)``: how many newest events the filters pick from (default: the API's)."""
    out = set()
    for eid, user, ts, _ in labels:
        for etype, ds in TYPES.items():
            if ds not in lengths:
                continue
            evs = sorted((e for e in events if e[1] == user and e[2] == etype and ts - LOOKBACK <= e[4] < ts),
                         key=lambda e: (e[4], e[0]), reverse=True)
            if tenant is not None:
                f = tenant.filters
                fetch = min(registry.datasets[ds].retention, lengths[ds] * (2 if tenant.filtering else 1))
                evs = evs[:window(ds) if window else fetch]
                evs = [e for e in evs if (not f.exclude_items or (e[3] is not None and e[3] not in f.exclude_items))
                       and (not f.max_age_s or e[4] >= ts - dt.timedelta(seconds=f.max_age_s))
                       and (not f.surfaces or e[5] in f.surfaces)
                       and (e[6] or 0) >= f.min_dwell_ms.get(ds, 0)]
                if f.dedup_items:
                    seen, kept = set(), []
                    for e in evs:
                        if e[3] not in seen:
                            seen.add(e[3])
                            kept.append(e)
                    evs = kept
            out |= {(eid, ds, rank, e[0], round((ts - e[4]).total_seconds(), 3))
                    for rank, e in enumerate(evs[:lengths[ds]], 1)}
    return out


def selected(spark, events, labels, registry, lengths, tenant=None):
    ev = spark.createDataFrame(events, "event_id string, user_id string, event_type string, item_id string, "
                                       "event_time timestamp, surface string, dwell_ms bigint") \
        .withColumn("query", F.lit(None).cast("string"))
    lb = spark.createDataFrame(labels, "example_id string, user_id string, ts timestamp, label string")
    rows = training.sequences_before(lb, ev, registry, lengths, LOOKBACK, tenant).collect()
    type_ids = {ds: registry.event_types[t].id for t, ds in TYPES.items()}
    assert all(r["type_id"] == type_ids[r["dataset"]] for r in rows)
    assert all(r["item_hash"] == (None if r["item_id"] is None else training.item_hash(r["item_id"])) for r in rows)
    return {(r["example_id"], r["dataset"], r["rank"], r["event_id"], round(r["age_s"], 3)) for r in rows}


@pytest.mark.parametrize("seed", [1, 2])
def test_newest_n_strictly_before_each_label(spark, registry, seed):
    events, labels = timeline(seed)
    lengths = {"clicks": 3, "repins": 2, "closeups": 4}
    want = expected(events, labels, registry, lengths)
    assert selected(spark, events, labels, registry, lengths) == want
    # Not vacuous: caps reached, ties at ts and at the lookback's edge present.
    assert any(r[2] == 3 for r in want if r[1] == "clicks")
    assert any(e[4] == ts for e in events for _, u, ts, _ in labels if e[1] == u)
    assert any(e[4] == ts - LOOKBACK for e in events for _, u, ts, _ in labels if e[1] == u)


@pytest.mark.parametrize("filters", [
    Filters(dedup_items=True, min_dwell_ms={"closeups": 1000}, max_age_s=1200),
    Filters(dedup_items=False, surfaces=("search", "home"), exclude_items=("i1",)),
])
def test_a_tenant_picks_with_its_filters_from_the_fetch_window(spark, registry, filters):
    events, labels = timeline(3)
    tenant = dataclasses.replace(registry.tenants["homefeed_ranking"], filters=filters,
                                 sequences={"clicks": 3, "repins": 4, "closeups": 2})
    lengths = dict(tenant.sequences)
    want = expected(events, labels, registry, lengths, tenant)
    assert selected(spark, events, labels, registry, lengths, tenant) == want


def test_the_filters_see_only_what_the_api_fetches(spark, registry):
    """Six clicks on one item, an older one on another: a tenant of 3 clicks that keeps the newest
    event per item is fetched 6 (twice 3), so the API serves one click, not the older item's too
    (which the 9 events the KV layer holds would have given)."""
    tenant = dataclasses.replace(registry.tenants["homefeed_ranking"], filters=Filters(dedup_items=True),
                                 sequences={"clicks": 3})
    events = [(f"e{k}", "u1", "click", "i0", T0 - dt.timedelta(minutes=k), None, None) for k in range(1, 7)]
    events.append(("e7", "u1", "click", "i1", T0 - dt.timedelta(minutes=7), None, None))
    labels = [("l0", "u1", T0, "click")]
    lengths = dict(tenant.sequences)
    got = selected(spark, events, labels, registry, lengths, tenant)
    assert got == {("l0", "clicks", 1, "e1", 60.0)}
    assert got == expected(events, labels, registry, lengths, tenant)
    assert len(expected(events, labels, registry, lengths, tenant, lambda ds: 9)) == 2


def test_item_features_are_the_version_valid_at_ts(spark, registry):
    rows = spark.createDataFrame([
        ("a", "clicks", 1, "i1", T0), ("b", "clicks", 1, "i1", T0 + dt.timedelta(hours=1)),
        ("c", "clicks", 1, "i1", T0 - dt.timedelta(days=2)), ("d", "repins", 1, "i1", T0),
        ("e", "clicks", 1, "i9", T0), ("f", "clicks", 1, None, T0)],
        "example_id string, dataset string, rank int, item_id string, ts timestamp")
    feats = spark.createDataFrame([
        ("i1", "v1", 0.1, T0 - dt.timedelta(days=1)),
        ("i1", "v2", 0.2, T0),                             # valid from T0 on: a's and d's
        ("i1", "v3", 0.3, T0 + dt.timedelta(minutes=30)),  # b's
        ("i9", "late", 0.9, T0 + dt.timedelta(seconds=1))],
        "item_id string, category string, popularity double, updated_at timestamp")
    got = {r["example_id"]: (r["category"], r["popularity"]) for r in
           training.features_as_of(rows, feats, registry, ("category", "popularity")).collect()}
    # Repins store no popularity; no version yet (c, e) or no item (f): NULL, the row kept.
    assert got == {"a": ("v2", 0.2), "b": ("v3", 0.3), "c": (None, None), "d": ("v2", None),
                   "e": (None, None), "f": (None, None)}
