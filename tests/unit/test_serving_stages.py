"""The serving stages as pure functions."""
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import featurize, filtering, size
from serving.model import UserSequences
from usersignals.aggregates import category_affinity, compute_views, decode_state, HALF_LIFE_MS, top_category
from usersignals.registry import load_registry, parse_tenant

REG = load_registry()
NOW = 1_800_000_000_000


def ev(n, item=None, ts=None, **kw):
    return {"event_id": f"e{n}", "item_id": item or f"i{n}", "ts": ts if ts is not None else NOW - n * 1000, **kw}


def tenant(**body):
    return parse_tenant("t", {"sequences": {"clicks": 3, "closeups": 2}, **body}, REG)


def test_filter_drops_excluded_old_short_and_repeated_items_in_that_order():
    t = tenant(filters={"dedup_items": True, "max_age_s": 60, "min_dwell_ms": {"closeups": 100},
                        "exclude_items": ["bad"]})
    events = [ev(1, "a"), ev(2, "bad"), ev(3, "a"), ev(4, "b"), ev(100, "old")]
    assert [e["event_id"] for e in filtering.filter_events(events, "clicks", t, NOW, frozenset({"bad"}))] == ["e1", "e4"]
    closeups = [ev(1, dwell_ms=50), ev(2, dwell_ms=150), ev(3)]
    assert [e["event_id"] for e in filtering.filter_events(closeups, "closeups", t, NOW, frozenset())] == ["e2"]


def test_filter_keeps_only_listed_surfaces_and_never_repeats_an_event():
    t = tenant(filters={"dedup_items": False, "surfaces": ["search"]})
    events = [ev(1, surface="search"), ev(1, surface="search"), ev(2, surface="homefeed"), ev(3)]
    assert [e["event_id"] for e in filtering.filter_events(events, "clicks", t, NOW, frozenset())] == ["e1"]


@settings(max_examples=80, deadline=None)
@given(items=st.lists(st.sampled_from("abcdef"), max_size=30), dwell=st.lists(st.integers(0, 300), max_size=30),
       limit=st.integers(1, 10))
def test_filter_with_a_limit_keeps_what_filtering_all_then_sizing_would(items, dwell, limit):
    t = tenant(filters={"dedup_items": True, "min_dwell_ms": {"clicks": 100}})
    events = [ev(n, item, dwell_ms=d) for n, (item, d) in enumerate(zip(items, dwell))]
    full = filtering.filter_events(events, "clicks", t, NOW, frozenset())
    assert filtering.filter_events(events, "clicks", t, NOW, frozenset(), limit) == full[:limit]


def test_size_cuts_to_the_tenant_length():
    u = UserSequences("u", {"clicks": [ev(i) for i in range(10)], "closeups": [ev(1)]})
    size.apply([u], tenant())
    assert len(u.sequences["clicks"]) == 3 and len(u.sequences["closeups"]) == 1


def test_arrow_batch_is_read_by_a_plain_arrow_reader_with_golden_values():
    import pyarrow as pa

    t = tenant(enrichments=["item_embedding"])
    users = [UserSequences("u", {"clicks": [ev(1, dwell_ms=5, features={"embedding": [0.5] * 16}),
                                            ev(2, item="i9", features={})],
                                 "closeups": []}),
             UserSequences("empty", {"clicks": [], "closeups": []})]
    arrays = featurize.to_arrays(users, t, REG, NOW)
    batch = featurize.to_arrow(["u", "empty"], arrays, {"tenant": "t", "views": [{"activity": 2.0}, {}]})
    table = pa.ipc.open_stream(featurize.encode_arrow(batch)).read_all()  # any Arrow reader
    assert table.column_names == ["user_id", "clicks.item_hash", "clicks.type_id", "clicks.age_s", "clicks.dwell_ms",
                                  "clicks.mask", "clicks.embedding", "closeups.item_hash", "closeups.type_id",
                                  "closeups.age_s", "closeups.dwell_ms", "closeups.mask", "closeups.embedding"]
    assert table.schema.field("clicks.embedding").type == pa.list_(pa.list_(pa.float32(), 16), 3)
    assert table.schema.field("closeups.mask").type == pa.list_(pa.uint8(), 2)
    assert table.schema.metadata[b"views"] == b'[{"activity":2.0},{}]'
    clicks = table.to_pylist()[0]
    assert clicks["user_id"] == "u"
    assert clicks["clicks.mask"] == [1, 1, 0]
    assert clicks["clicks.type_id"] == [REG.event_types["click"].id] * 2 + [0]
    assert clicks["clicks.age_s"] == [1.0, 2.0, 0.0] and clicks["clicks.dwell_ms"] == [5.0, 0.0, 0.0]
    # blake2b-8 (little-endian) of the item id >> 1: stable across releases, models are trained on it
    assert clicks["clicks.item_hash"][:2] == [389430377700070743, 6673299963710175480]   # i1, i9
    assert clicks["clicks.embedding"][0] == [0.5] * 16 and clicks["clicks.embedding"][1] == [0.0] * 16
    assert table.to_pylist()[1]["clicks.mask"] == [0, 0, 0]
    meta, back = featurize.decode_arrow(featurize.encode_arrow(batch))
    assert meta["tenant"] == "t" and back["clicks.embedding"].shape == (2, 3, 16)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and np.array_equal(back[name], a)


datasets = st.sampled_from(sorted(REG.datasets))


@settings(max_examples=60, deadline=None)
@given(
    seq=st.dictionaries(datasets, st.integers(1, 20), min_size=1, max_size=4),
    embed=st.booleans(),
    counts=st.lists(st.integers(0, 30), min_size=1, max_size=5),
)
def test_arrays_always_match_the_declared_layout(seq, embed, counts):
    seq = {ds: min(n, REG.datasets[ds].retention) for ds, n in seq.items()}
    t = parse_tenant("t", {"sequences": seq, "enrichments": ["item_embedding"] if embed else []}, REG)
    users = [UserSequences(f"u{i}", {ds: [ev(j, features={"embedding": [0.1] * 16}) for j in range(c)][:seq[ds]]
                                     for ds in seq}) for i, c in enumerate(counts)]
    arrays = featurize.to_arrays(users, t, REG, NOW)
    layout = featurize.layout(t, REG, 16 if embed else None)
    assert [name for name, _, _ in layout] == list(arrays)
    for name, dtype, shape in layout:
        assert arrays[name].shape == (len(users), *shape)
        assert arrays[name].dtype == np.dtype(dtype)
    for ds in seq:
        assert arrays[f"{ds}.mask"].sum(axis=1).tolist() == [min(c, seq[ds]) for c in counts]


@settings(max_examples=60, deadline=None)
@given(
    seq=st.dictionaries(datasets, st.integers(1, 20), min_size=1, max_size=4),
    embed=st.booleans(),
    ids=st.lists(st.text(max_size=12), min_size=1, max_size=5),
    request_id=st.text(max_size=40),
)
def test_the_api_s_arrow_stream_is_the_bytes_of_pyarrow_s_stream_writer(seq, embed, ids, request_id):
    """arrow_stream copies arrays into a template of the batch's shape: for any shape, user ids
    (empty, non-ASCII) and metadata, byte for byte what pyarrow writes, decoded by a plain reader."""
    import pyarrow as pa

    seq = {ds: min(n, REG.datasets[ds].retention) for ds, n in seq.items()}
    t = parse_tenant("t", {"sequences": seq, "enrichments": ["item_embedding"] if embed else []}, REG)
    users = [UserSequences(u, {ds: [ev(j, item=f"{u}-{j}", features={"embedding": [0.25 * i] * 16})
                                    for j in range(i * 3)][:seq[ds]] for ds in seq}) for i, u in enumerate(ids)]
    arrays = featurize.to_arrays(users, t, REG, NOW)
    meta = {"tenant": "t", "request_id": request_id, "views": [{"activity": float(i)} for i in range(len(ids))]}
    for _ in range(2):  # the second time from the cached template
        fast = featurize.arrow_stream(ids, arrays, meta)
        assert fast == featurize.encode_arrow(featurize.to_arrow(ids, arrays, meta))
    table = pa.ipc.open_stream(fast).read_all()
    assert table.column("user_id").to_pylist() == ids
    assert orjson.loads(table.schema.metadata[b"request_id"]) == request_id


def test_views_share_one_decayed_state():
    raw = {b"c:c1": f"4.0:{NOW - HALF_LIFE_MS}".encode(), b"c:c2": f"1.0:{NOW}".encode(), b"other": b"x"}
    state = decode_state(raw, NOW)
    assert state == {"c1": 2.0, "c2": 1.0}
    assert category_affinity(state) == {"c1": 0.6667, "c2": 0.3333}
    assert top_category(state) == "c1"
    assert compute_views(["activity", "top_category"], state) == {"activity": 3.0, "top_category": "c1"}
    assert compute_views(["category_affinity", "top_category"], {}) == {"category_affinity": {}, "top_category": None}


def test_batched_histograms_flush_what_prometheus_observe_would_record():
    """serving.metrics.BatchedHistogram relies on prometheus_client's bucket internals: same
    samples as observing each value, bounds included."""
    from prometheus_client import CollectorRegistry, Histogram

    from serving.metrics import BatchedHistogram

    r = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", ["t"], buckets=(0.001, 0.01, 0.1, 1), registry=r).labels("a")
    batched_parent = Histogram("batched_seconds", "b", ["t"], buckets=(0.001, 0.01, 0.1, 1), registry=r)
    batched = BatchedHistogram(batched_parent.labels("a"))
    values = [0.0, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 1.0, 1.5, 30.0, 0.001]
    for v in values:
        direct.observe(v)
        batched.observe(v)
    assert r.get_sample_value("batched_seconds_count", {"t": "a"}) == 0  # not flushed yet
    batched.flush()
    batched.flush()  # nothing twice
    for le in ("0.001", "0.01", "0.1", "1.0", "+Inf"):
        assert (r.get_sample_value("batched_seconds_bucket", {"t": "a", "le": le})
                == r.get_sample_value("direct_seconds_bucket", {"t": "a", "le": le})), le
    assert r.get_sample_value("batched_seconds_sum", {"t": "a"}) == pytest.approx(sum(values))
