"""Sequences as columns: what the model-ready format reads of each kept event.

A request for model-ready arrays never needs an event as a dict: the filter stage reads each
sequence straight from the KV layer's JSON into ``Columns`` (item ids, item hashes, times,
dwell), the enricher looks the item ids up, and featurize places the columns into the arrays.
``scan`` does that read with the native hot path (``serving_native``, Rust, built by ``make
install`` from serving/native), which filters as ``filtering.filter_events`` does while it
reads and stops at the tenant's length. The Python path (parse, filter, read the fields) is
the reference: a property test checks both agree, and it serves when the native module is not
built or does not accept a sequence (a field of an unexpected JSON type).
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import orjson

from usersignals.registry import Tenant

from serving import filtering  # which imports this module: its names are read at call time

try:
    import serving_native
except ImportError:  # pragma: no cover - make install builds it; CI checks it is there
    serving_native = None
    logging.getLogger(__name__).warning(
        "serving_native is not built (make install builds it from serving/native): model-ready "
        "arrays take the slower Python path")


@lru_cache(maxsize=200_000)
def item_hash(item_id: str) -> int:
    """Stable 63-bit hash of an item id: blake2b-8, little-endian, shifted right by one."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little") >> 1


@dataclass(slots=True)
class Columns:
    """One sequence's kept events, newest first, a field per array."""

    item_ids: list[str]
    item_hash: np.ndarray  # int64
    ts: np.ndarray         # int64, epoch milliseconds
    dwell_ms: np.ndarray   # float32, 0 when unknown

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getitem__(self, cut: slice) -> "Columns":
        return Columns(self.item_ids[cut], self.item_hash[cut], self.ts[cut], self.dwell_ms[cut])

    @classmethod
    def of_events(cls, events) -> "Columns":
        """The columns of decoded events (dicts)."""
        ids = [e["item_id"] for e in events]
        return cls(ids, np.array([item_hash(i) for i in ids], dtype=np.int64),
                   np.array([e["ts"] for e in events], dtype=np.int64),
                   np.array([e.get("dwell_ms") or 0 for e in events], dtype=np.float32))


def item_ids(sequence) -> list[str]:
    """The item ids of a sequence, as columns or as decoded events."""
    return sequence.item_ids if isinstance(sequence, Columns) else [e["item_id"] for e in sequence]


def scan(raw: bytes, dataset: str, tenant: Tenant, now_ms: int, excluded: frozenset[str], limit: int,
         native: bool = True) -> Columns:
    """The events of one stored sequence (the KV layer's JSON array) that the tenant keeps, at
    most ``limit``, as columns: ``Columns.of_events(filter_events(orjson.loads(raw), ...)[:limit])``.
    ``native=False`` takes the Python path (the reference)."""
    f = tenant.filters
    filtered = bool(excluded) or filtering.has_filters(tenant)
    if native and serving_native is not None:
        min_dwell = f.min_dwell_ms.get(dataset)
        try:
            ids, hashes, ts, dwell = serving_native.scan(
                raw, limit, filtered, math.ceil(now_ms - f.max_age_s * 1000) if f.max_age_s else None,
                frozenset(f.surfaces) if f.surfaces else None, None if min_dwell is None else float(min_dwell),
                f.dedup_items, excluded or None)
            return Columns(ids, np.frombuffer(hashes, "<i8"), np.frombuffer(ts, "<i8"), np.frombuffer(dwell, "<f4"))
        except ValueError:
            pass  # the Python path reads any JSON (and fails as the rest of the API would)
    events = orjson.loads(raw)
    if filtered:
        events = filtering.filter_events(events, dataset, tenant, now_ms, excluded, limit)
    return Columns.of_events(events[:limit])
