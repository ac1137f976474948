"""The serving API's native hot path (serving/native) against the Python reference: for any
stored sequence and any tenant filters, the same kept events and the same columns."""
import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import columns
from usersignals.registry import load_registry, parse_tenant

REG = load_registry()
NOW = 1_800_000_000_000

# Few distinct ids, so repeats (dedup) happen; quotes, backslashes and non-ASCII take the
# escaped-string path of the native reader.
ids = st.sampled_from(["i1", "i2", "i3", 'q"uote', "back\\slash", "é", "😀", "a/b", "tab\t", ""])
surfaces = st.sampled_from(["homefeed", "search", "profile"])
extra = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=8)


@st.composite
def events(draw):
    e = {"event_id": draw(st.sampled_from(["e1", "e2", "e3", "e4", "e5", "e6"])), "item_id": draw(ids),
         "ts": draw(st.integers(NOW - 10_000_000, NOW + 1000))}
    if draw(st.booleans()):
        e["surface"] = draw(st.none() | surfaces)
    if draw(st.booleans()):
        e["dwell_ms"] = draw(st.none() | st.integers(0, 5000) | st.floats(0, 5000, width=32))
    if draw(st.booleans()):
        e["features"] = draw(extra)
    keys = draw(st.permutations(list(e)))  # any key order
    return {k: e[k] for k in keys}


@st.composite
def tenants(draw):
    filters = {"dedup_items": draw(st.booleans())}
    if draw(st.booleans()):
        filters["max_age_s"] = draw(st.integers(1, 10_000))
    if draw(st.booleans()):
        filters["min_dwell_ms"] = {"clicks": draw(st.integers(1, 3000))}
    if draw(st.booleans()):
        filters["surfaces"] = draw(st.lists(surfaces, min_size=1, max_size=2, unique=True))
    if draw(st.booleans()):
        filters["exclude_items"] = draw(st.lists(ids.filter(bool), max_size=2, unique=True))
    return parse_tenant("t", {"sequences": {"clicks": 20}, "filters": filters}, REG)


def test_the_native_module_is_built():
    """make install builds it; without it the API serves, slower (the Python path)."""
    assert columns.serving_native is not None


@settings(max_examples=400, deadline=None)
@given(evs=st.lists(events(), max_size=25), tenant=tenants(), limit=st.integers(1, 30),
       exclude=st.lists(ids, max_size=2), dump=st.sampled_from(["orjson", "spaced", "ascii"]))
def test_native_scan_keeps_what_the_python_path_keeps(evs, tenant, limit, exclude, dump):
    raw = (orjson.dumps(evs) if dump == "orjson" else
           json.dumps(evs, indent=1, ensure_ascii=False).encode() if dump == "spaced" else json.dumps(evs).encode())
    excluded = frozenset(tenant.filters.exclude_items) | frozenset(exclude)
    ref = columns.scan(raw, "clicks", tenant, NOW, excluded, limit, native=False)
    # the native reader accepts every one of these (no silent fall back to the Python path)
    columns.serving_native.scan(raw, limit, True)
    got = columns.scan(raw, "clicks", tenant, NOW, excluded, limit)
    assert got.item_ids == ref.item_ids
    for field in ("item_hash", "ts", "dwell_ms"):
        a, b = getattr(got, field), getattr(ref, field)
        assert a.dtype == b.dtype and np.array_equal(a, b), field


def test_native_item_hash_is_the_apis():
    for item in ["i1", "é", "😀", "", "x" * 300]:
        assert columns.serving_native.item_hash(item) == columns.item_hash(item)


@pytest.mark.parametrize("raw", [b"", b"{}", b"[", b"[{}]", b'[{"event_id":"e","item_id":"i","ts":1.5}]',
                                 b'[{"event_id":"e","item_id":"i","ts":1}] x', b'[{"event_id":"e","item_id":3,"ts":1}]',
                                 b'[{"event_id":"\\', b'[{"event_id":"e","x":{"a":"\\'])
def test_what_the_native_reader_refuses_is_a_value_error(raw):
    """...on which ``columns.scan`` takes the Python path (which reads or rejects it as before)."""
    with pytest.raises(ValueError, match="not a stored event array"):
        columns.serving_native.scan(raw, 10, True)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=80) | st.builds(lambda evs, cut: orjson.dumps(evs)[:cut], st.lists(events(), max_size=3),
                                             st.integers(0, 400)))
def test_the_native_reader_never_panics(raw):
    """Any bytes (truncated arrays too): columns or ValueError, never a Rust panic (a 500)."""
    try:
        columns.serving_native.scan(raw, 5, True, None, None, None, True, None)
    except ValueError:
        pass


def test_a_float_time_falls_back_to_the_python_path():
    raw = b'[{"event_id":"e","item_id":"i","ts":1700000000000.0}]'
    t = parse_tenant("t", {"sequences": {"clicks": 5}}, REG)
    got = columns.scan(raw, "clicks", t, NOW, frozenset(), 5)
    assert got.item_ids == ["i"] and got.ts.tolist() == [1700000000000]
