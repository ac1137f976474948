"""The skew job's comparison (batch.skew), without Spark: what 'equal' means per value, and how a
logged request is counted against its lake rebuild, position by position, per feature."""
import dataclasses

import numpy as np
import orjson
import pytest

from batch.skew import (
    Tolerance, compare_request, compare_sequences, fetch_limits, mismatch_rate, values_equal,
)
from batch.training import item_hash
from usersignals.registry import Filters, load_registry

SERVED_MS = 1_764_000_000_000


def test_integers_and_strings_are_equal_only_exactly():
    assert values_equal(3, 3) and not values_equal(3, 4)
    # 63-bit item hashes one apart: a float comparison would call them equal.
    h = item_hash("i1")
    assert not values_equal(h, h + 1)
    assert values_equal("cat", "cat") and not values_equal("cat", "Cat")


def test_floats_are_equal_within_the_tolerance():
    assert values_equal(0.1, 0.1 + 1e-9)
    assert not values_equal(0.1, 0.1001)
    # float32's round trip of a popularity score is within 1e-6.
    assert values_equal(float(np.float32(0.7)), 0.7)
    # An integer dwell served as float32 equals the lake's integer.
    assert values_equal(1500.0, 1500) and not values_equal(1501.0, 1500)
    assert values_equal(100.4, 100.0, Tolerance(abs=1.0, rel=0)) and not values_equal(101.5, 100.0, Tolerance(1.0, 0))


def test_arrays_are_equal_element_wise_and_of_the_same_length():
    assert values_equal([0.1, 0.2], [0.1, 0.2 + 1e-9])
    assert not values_equal([0.1, 0.2], [0.1, 0.25])
    assert not values_equal([0.1, 0.2], [0.1, 0.2, 0.0])
    assert not values_equal([0.1], 0.1)


def test_none_equals_only_none():
    assert values_equal(None, None)
    assert not values_equal(None, 0) and not values_equal("", None)


def test_values_on_one_side_only_are_missing_not_mismatched():
    counts = {}
    online = [{"item_id": "a", "category": None}, {"item_id": "b", "category": "x"}]
    offline = [{"item_id": "a", "category": "food"}, {"item_id": "b", "category": "y"},
               {"item_id": "c", "category": None}]
    compare_sequences(online, offline, ("item_id", "category"), counts)
    # item_id: a, b compared equal; c only offline. category: a only offline; b differs; c nowhere.
    assert counts == {"item_id": [2, 0, 1, 0], "category": [1, 1, 1, 0]}


def test_a_missing_event_shifts_every_position_after_it():
    counts = {}
    compare_sequences([{"item_id": "b"}, {"item_id": "c"}], [{"item_id": "a"}, {"item_id": "b"}, {"item_id": "c"}],
                      ("item_id",), counts)
    assert counts == {"item_id": [2, 2, 1, 0]}


def test_mismatch_rate_is_none_without_compared_values():
    assert mismatch_rate(20, 3) == 0.15 and mismatch_rate(0, 0) is None


def lake_event(n, item, ts_ms, dwell=None, **features):
    e = {"event_id": f"e{n}", "item_id": item, "ts": ts_ms, "surface": "home", "features": features}
    if dwell is not None:
        e["dwell_ms"] = dwell
    return e


def test_an_arrow_record_is_compared_as_serving_featurized_it():
    from serving import featurize
    from serving.model import UserSequences

    registry = load_registry()
    tenant = registry.tenants["homefeed_ranking"]
    lake = {"clicks": [lake_event(1, "i1", SERVED_MS - 5_000, 200, embedding=[0.5] * 16),
                       lake_event(2, "i2", SERVED_MS - 9_000, None)],
            "repins": [lake_event(3, "i3", SERVED_MS - 60_000)], "closeups": []}
    # What the API served: its own featurize code, the clock read 40 ms before the log's served_at.
    items = {"i1": {featurize.EMBEDDING_F32: np.asarray([0.5] * 16, "<f4").tobytes()}}
    user = UserSequences("u1", {ds: [dict(e) | {"features": {}} for e in evs] for ds, evs in lake.items()})
    arrays = featurize.to_arrays([user], tenant, registry, SERVED_MS - 40, items=items)
    record = orjson.loads(orjson.dumps({n: a[0] for n, a in arrays.items()} | {"views": {}},
                                       option=orjson.OPT_SERIALIZE_NUMPY))
    lengths = dict(tenant.sequences)
    type_ids = {d: registry.event_types[registry.datasets[d].event_type].id for d in lengths}
    got = compare_request("arrow", record, lake, lengths, type_ids, SERVED_MS, {}, registry.model.embedding_dim)
    assert got[("clicks", "item_id")] == [2, 0, 0, 0]
    assert got[("clicks", "age_s")] == [2, 0, 0, 0]          # 40 ms apart: within the 1 s tolerance
    assert got[("clicks", "dwell_ms")] == [2, 0, 0, 0]       # unknown dwell is served as 0
    assert got[("clicks", "embedding")] == [2, 0, 0, 0]      # i2 has none: zeros on both sides
    assert got[("repins", "type_id")] == [1, 0, 0, 0]
    assert ("closeups", "item_id") not in got                 # nothing on either side: nothing counted

    # The lake has a newer click the log lacks: every position shifts, one value is missing online.
    lake["clicks"].insert(0, lake_event(0, "i0", SERVED_MS - 1_000, 10))
    got = compare_request("arrow", record, lake, lengths, type_ids, SERVED_MS, {}, registry.model.embedding_dim)
    assert got[("clicks", "item_id")] == [2, 2, 1, 0]
    assert got[("repins", "item_id")] == [1, 0, 0, 0]


def test_a_json_record_compares_event_fields_and_item_features():
    online = {"user_id": "u1", "sequences": {
        "clicks": [{"event_id": "e1", "item_id": "i1", "ts": 10, "surface": "search", "features": {"category": "a",
                                                                                                    "popularity": 0.5}},
                   {"event_id": "e2", "item_id": "i2", "ts": 9, "surface": "search", "features": {"category": "b"}}],
        "searches": [{"event_id": "s1", "item_id": "i9", "ts": 8, "query": "shoes", "features": {}}]}}
    offline = {"clicks": [{"event_id": "e1", "item_id": "i1", "ts": 10, "surface": "search",
                           "features": {"category": "a", "popularity": 0.5000000001}},
                          {"event_id": "e2", "item_id": "i2", "ts": 9, "surface": "search",
                           "features": {"category": "c", "popularity": 0.1}}],
               "searches": [{"event_id": "s1", "item_id": "i9", "ts": 8, "query": "shoes", "features": {}}]}
    got = compare_request("json", online, offline, {"clicks": 20, "searches": 1}, {"clicks": 1, "searches": 5}, 0,
                          {"clicks": ("category", "popularity"), "searches": ()})
    assert got[("clicks", "category")] == [2, 1, 0, 0]
    assert got[("clicks", "popularity")] == [1, 0, 1, 0]     # e2's popularity: the stream did not store one
    assert got[("clicks", "event_time")] == [2, 0, 0, 0]
    assert got[("clicks", "query")] == [0, 0, 0, 0]          # neither side has a query on clicks
    assert got[("searches", "query")] == [1, 0, 0, 0]
    # Sequences are cut to the tenant's length on both sides.
    offline["searches"].append({"event_id": "s0", "item_id": "i8", "ts": 7, "features": {}})
    got = compare_request("json", online, offline, {"clicks": 20, "searches": 1}, {"clicks": 1, "searches": 5}, 0,
                          {})
    assert got[("searches", "event_id")] == [1, 0, 0, 0]


def test_an_unknown_format_is_refused_by_name():
    with pytest.raises(ValueError, match="'parquet'"):
        compare_request("parquet", {}, {}, {"clicks": 1}, {"clicks": 1}, 0, {})


def test_fetch_limits_read_twice_the_length_when_filters_can_drop_events_at_most_the_retention():
    """The window the lake rebuild reads per dataset, worked out by hand from the default registry:
    retention clicks 100, repins 20, closeups 100, searches 50."""
    registry = load_registry()
    home, search = registry.tenants["homefeed_ranking"], registry.tenants["search_ranking"]
    # homefeed_ranking filters (dedup, min dwell): clicks 2*50 = 100, repins 2*20 = 40 -> retention 20,
    # closeups 2*100 = 200 -> retention 100.
    assert fetch_limits(home, registry, ["clicks", "repins", "closeups"]) == {"clicks": 100, "repins": 20,
                                                                              "closeups": 100}
    # search_ranking filters by surface: searches 2*20 = 40 (under 50), clicks 2*20 = 40.
    assert fetch_limits(search, registry, ["searches", "clicks"]) == {"searches": 40, "clicks": 40}
    # Only the datasets asked for.
    assert fetch_limits(search, registry, ["clicks"]) == {"clicks": 40}
    # Filters that drop nothing (no dedup, no thresholds): the length itself.
    unfiltered = dataclasses.replace(search, filters=Filters(dedup_items=False))
    assert not unfiltered.filtering
    assert fetch_limits(unfiltered, registry, ["searches", "clicks"]) == {"searches": 20, "clicks": 20}
