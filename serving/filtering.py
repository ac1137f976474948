"""Stage 2, filter: drop what a tenant does not want to see.

In order: items the request or the tenant excludes, events outside the time window,
surfaces the tenant does not serve, close-ups/clicks under the dwell threshold, and
repeated items (the newest event per item is kept). Duplicated event ids are always
dropped (the KV layer stores each once, but filters must be safe on any input).
"""
from __future__ import annotations

from typing import Iterable

from usersignals.registry import Tenant

from serving import columns
from serving.model import UserSequences


def has_filters(tenant: Tenant) -> bool:
    """Whether the tenant's filters can drop anything (request-level exclusions aside)."""
    return tenant.filtering


def filter_events(events: list[dict], dataset: str, tenant: Tenant, now_ms: int,
                  exclude_items: frozenset[str], limit: int | None = None) -> list[dict]:
    """The events the tenant keeps, in order; at most ``limit`` (the first ones kept: what the
    size stage would cut to, so the rest of an over-fetched sequence is not looked at)."""
    f = tenant.filters
    min_ts = now_ms - f.max_age_s * 1000 if f.max_age_s else None
    min_dwell = f.min_dwell_ms.get(dataset)
    surfaces = f.surfaces
    seen_events: set[str] = set()
    seen_items: set[str] = set()
    out = []
    for e in events:
        eid = e["event_id"]
        if eid in seen_events:
            continue
        seen_events.add(eid)
        item = e["item_id"]
        if item in exclude_items:
            continue
        if min_ts is not None and e["ts"] < min_ts:
            continue
        if surfaces and e.get("surface") not in surfaces:
            continue
        if min_dwell is not None and (e.get("dwell_ms") or 0) < min_dwell:
            continue
        if f.dedup_items:
            if item in seen_items:
                continue
            seen_items.add(item)
        out.append(e)
        if len(out) == limit:
            break
    return out


def apply(users: list[UserSequences], tenant: Tenant, now_ms: int, exclude_items: Iterable[str] = ()) -> None:
    """Filters each sequence, up to the tenant's length of it (what the size stage keeps)."""
    excluded = frozenset(tenant.filters.exclude_items) | frozenset(exclude_items)
    if not (excluded or has_filters(tenant)):
        return  # nothing to drop: the KV layer already stores each event id once per dataset
    lengths = tenant.sequences
    for u in users:
        u.sequences = {ds: filter_events(evs, ds, tenant, now_ms, excluded, lengths.get(ds))
                       for ds, evs in u.sequences.items()}


def apply_columns(users: list[UserSequences], tenant: Tenant, now_ms: int, exclude_items: Iterable[str] = ()) -> None:
    """The filter stage of model-ready requests: each sequence, still the KV layer's JSON, read
    into the columns of the events the tenant keeps, up to its length (``columns.scan``)."""
    excluded = frozenset(tenant.filters.exclude_items) | frozenset(exclude_items)
    lengths = tenant.sequences
    for u in users:
        u.sequences = {ds: columns.scan(raw, ds, tenant, now_ms, excluded, lengths[ds])
                       for ds, raw in u.sequences.items()}
