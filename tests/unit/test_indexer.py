"""Indexer logic with in-memory stand-ins for the KV layer and the feature source."""
import orjson
import pytest
from prometheus_client import CollectorRegistry

from streaming.indexer import Indexed, Indexer, Rejection, Unindexed
from streaming.metrics import MAX_UNINDEXED_TYPES, OTHER_EVENT_TYPES, IndexerMetrics
from usersignals.features import CachedFeatures
from usersignals.registry import load_registry

NOW = 1_800_000_000.0


class MemoryStore:
    def __init__(self):
        self.written = []
        self.fail = False

    def write(self, events):
        if self.fail:
            raise ConnectionError("kv down")
        new = [e.event_id not in {w.event_id for w in self.written} for e in events]
        self.written.extend(events)
        return new


class MemoryFeatures:
    def __init__(self, feats):
        self.feats = feats
        self.calls = []

    def get_many(self, ids):
        ids = list(ids)
        self.calls.append(ids)
        return {i: self.feats[i] for i in ids if i in self.feats}


class MemoryAggregates:
    def __init__(self):
        self.updates = []

    def update(self, events):
        self.updates.extend(events)


def make(feats=None):
    reg = load_registry()
    source = MemoryFeatures(feats or {"i1": {"category": "c1", "popularity": 0.5, "embedding": [0.1]}})
    metrics_registry = CollectorRegistry()
    idx = Indexer(reg, MemoryStore(), CachedFeatures(source), IndexerMetrics(metrics_registry),
                  clock=lambda: NOW, aggregates=MemoryAggregates())
    return idx, source, metrics_registry


def record(**over):
    ev = {"event_id": "e1", "user_id": "u1", "event_type": "click", "item_id": "i1", "ts": int(NOW * 1000) - 500}
    ev.update(over)
    return ev["user_id"].encode(), orjson.dumps(ev)


def metric(reg, name, labels=None):
    return reg.get_sample_value(name, labels or {})


def test_good_events_are_buffered_until_flush_then_written_with_indexing_enrichments():
    idx, _, _ = make()
    out = idx.accept(*record())
    assert isinstance(out, Indexed)
    assert (out.dataset, out.event.event_id, out.indexed_at_ms) == ("clicks", "e1", int(NOW * 1000))
    # clicks stores category and popularity, not the serving-time embedding.
    assert out.features == {"category": "c1", "popularity": 0.5}
    assert idx.store.written == [] and idx.pending == 1
    assert idx.flush() == 1
    (e,) = idx.store.written
    assert (e.dataset, e.user_id, e.event_id) == ("clicks", "u1", "e1")
    # clicks stores category and popularity, not the serving-time embedding.
    assert orjson.loads(e.payload)["features"] == {"category": "c1", "popularity": 0.5}


def test_bad_records_are_rejected_with_reason_and_counted_not_buffered():
    idx, _, reg = make()
    rej = idx.accept(b"u1", b"{oops")
    assert rej.reason == "not_json" and idx.pending == 0
    assert metric(reg, "usersignals_indexer_dlq_total", {"reason": "not_json"}) == 1
    assert metric(reg, "usersignals_indexer_events_in_total") == 1


def test_a_well_formed_event_of_an_unregistered_type_is_kept_unindexed_and_counted_by_type():
    idx, _, reg = make()
    out = idx.accept(*record(event_type="share"))
    assert isinstance(out, Unindexed)
    assert (out.event.event_id, out.event.event_type, out.received_at_ms) == ("e1", "share", int(NOW * 1000))
    assert idx.pending == 0 and idx.flush() == 0 and idx.store.written == []
    assert idx.aggregates.updates == []
    assert metric(reg, "usersignals_indexer_unindexed_events_total", {"event_type": "share"}) == 1
    assert metric(reg, "usersignals_indexer_dlq_total", {"reason": "unknown_event_type"}) == 0


def test_a_malformed_event_of_an_unregistered_type_is_still_a_dead_letter():
    idx, _, reg = make()
    out = idx.accept(*record(event_type="share", ts=0))
    assert isinstance(out, Rejection) and out.reason == "ts_out_of_range"
    assert metric(reg, "usersignals_indexer_dlq_total", {"reason": "ts_out_of_range"}) == 1
    assert metric(reg, "usersignals_indexer_unindexed_events_total", {"event_type": "share"}) is None


def test_unindexed_types_past_the_bound_share_one_label():
    idx, _, reg = make()
    for n in range(MAX_UNINDEXED_TYPES + 5):
        idx.accept(*record(event_id=f"e{n}", event_type=f"made_up_{n}"))
    assert metric(reg, "usersignals_indexer_unindexed_events_total", {"event_type": "made_up_0"}) == 1
    assert metric(reg, "usersignals_indexer_unindexed_events_total",
                  {"event_type": f"made_up_{MAX_UNINDEXED_TYPES}"}) is None
    assert metric(reg, "usersignals_indexer_unindexed_events_total", {"event_type": OTHER_EVENT_TYPES}) == 5
    idx.accept(*record(event_id="again", event_type="made_up_0"))   # a type seen before keeps its label
    assert metric(reg, "usersignals_indexer_unindexed_events_total", {"event_type": "made_up_0"}) == 2


def test_an_item_without_features_is_indexed_with_empty_enrichment_and_counted():
    idx, _, reg = make()
    idx.accept(*record(item_id="unknown"))
    idx.flush()
    assert orjson.loads(idx.store.written[0].payload)["features"] == {}
    assert metric(reg, "usersignals_indexer_items_without_features_total") == 1


def test_each_item_is_looked_up_once_then_served_from_the_cache():
    idx, source, reg = make()
    for n in range(50):
        idx.accept(*record(event_id=f"e{n}", item_id="i1" if n % 2 else "i2"))
    idx.flush()
    assert source.calls == [["i2"], ["i1"]]  # i2 has no features: its absence is cached too
    idx.accept(*record(event_id="again"))
    idx.flush()
    assert source.calls == [["i2"], ["i1"]]
    assert metric(reg, "usersignals_indexer_items_without_features_total") == 25


def test_a_failed_write_keeps_the_batch_for_the_retry():
    idx, _, _ = make()
    idx.accept(*record())
    idx.store.fail = True
    with pytest.raises(ConnectionError):
        idx.flush()
    assert idx.pending == 1
    idx.store.fail = False
    assert idx.flush() == 1


def test_lag_and_writes_are_measured_per_dataset():
    idx, _, reg = make()
    idx.accept(*record())
    idx.accept(*record(event_id="e2", event_type="view"))
    idx.flush()
    assert metric(reg, "usersignals_indexer_kv_writes_total", {"dataset": "views"}) == 1
    assert metric(reg, "usersignals_indexer_end_to_end_lag_seconds_count") == 2
    assert metric(reg, "usersignals_indexer_end_to_end_lag_seconds_sum") == pytest.approx(1.0)


def test_only_new_events_with_a_category_feed_the_aggregates():
    idx, _, _ = make()
    idx.accept(*record())
    idx.accept(*record(event_id="e2", item_id="unknown"))
    idx.flush()
    idx.accept(*record())  # a replay
    idx.flush()
    assert [(u, c, t) for u, c, _, t in idx.aggregates.updates] == [("u1", "c1", "click")]
