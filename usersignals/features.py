"""Item features: the source that enrichments read, with a bounded in-process cache.

Features live in the KV server as one JSON string per item (``{p}:item:<item_id>``),
written by the offline jobs (and, locally, by the event generator). Readers fetch
many items in one pipelined round trip and cache them for a short time, because
item features change slowly and the same popular items recur in every batch.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Iterable, Mapping

import orjson

from usersignals.models import current_version, embedding_key, overlay


def item_key(prefix: str, item_id: str) -> str:
    return f"{prefix}:item:{item_id}"


class ItemFeatureStore:
    """Item features from the KV layer; the current published model version's embedding, if any
    (``usersignals.models``), replaces the ``embedding`` field."""

    def __init__(self, client, prefix: str = "us", version_ttl_s: float = 1.0, clock=time.monotonic):
        self.client = client
        self.prefix = prefix
        self.version_ttl_s = version_ttl_s
        self.clock = clock
        self._version: tuple[float, str | None] | None = None

    def embedding_version(self) -> str | None:
        """The published embedding version (re-read at most every ``version_ttl_s``)."""
        now = self.clock()
        if self._version is None or now - self._version[0] >= self.version_ttl_s:
            self._version = (now, current_version(self.client, self.prefix))
        return self._version[1]

    def key(self, item_id: str) -> str:
        return item_key(self.prefix, item_id)

    def put_many(self, features: Mapping[str, Mapping[str, Any]], chunk: int = 5000) -> None:
        items = list(features.items())
        for i in range(0, len(items), chunk):
            pipe = self.client.pipeline(transaction=False)
            for item_id, feats in items[i:i + chunk]:
                pipe.set(self.key(item_id), orjson.dumps(feats))
            pipe.execute()

    def get_many(self, item_ids: Iterable[str]) -> dict[str, dict]:
        """Features of the items that have any; absent items are left out. One round trip."""
        ids = list(item_ids)
        if not ids:
            return {}
        version = self.embedding_version()
        pipe = self.client.pipeline(transaction=False)
        for item_id in ids:
            pipe.get(self.key(item_id))
        if version is not None:
            for item_id in ids:
                pipe.get(embedding_key(self.prefix, version, item_id))
        replies = pipe.execute()
        out = {}
        for item_id, raw in zip(ids, replies):
            if raw is not None:
                out[item_id] = orjson.loads(raw)
        if version is not None:
            out = overlay(out, dict(zip(ids, replies[len(ids):])))
        return out


class CachedFeatures:
    """LRU + TTL cache in front of an ``ItemFeatureStore``; misses are fetched in one batch.

    Absent items are cached too (as ``None``) so an unknown item does not cost a
    lookup per event.
    """

    def __init__(self, store: ItemFeatureStore, max_items: int = 200_000, ttl_s: float = 60.0,
                 clock=time.monotonic, version_check_s: float = 1.0):
        self.store = store
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.clock = clock
        self.version_check_s = version_check_s
        self._version_checked = float("-inf")
        self._cache: OrderedDict[str, tuple[float, dict | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def lookup(self, item_ids: Iterable[str]) -> tuple[dict[str, dict | None], list[str]]:
        """Cached features, and the ids to fetch (for callers that fetch asynchronously)."""
        now, ttl = self.clock(), self.ttl_s
        get, touch = self._cache.get, self._cache.move_to_end
        out: dict[str, dict | None] = {}
        missing: list[str] = []
        unique = item_ids if isinstance(item_ids, (set, frozenset, dict)) else dict.fromkeys(item_ids)
        for item_id in unique:
            entry = get(item_id)
            if entry is not None and now - entry[0] < ttl:
                touch(item_id)
                out[item_id] = entry[1]
            else:
                missing.append(item_id)
        self.hits += len(out)
        self.misses += len(missing)
        return out, missing

    def fill(self, missing: list[str], fetched: Mapping[str, dict], out: dict[str, dict | None]) -> None:
        now = self.clock()
        for item_id in missing:
            feats = fetched.get(item_id)
            out[item_id] = feats
            self._cache[item_id] = (now, feats)
            self._cache.move_to_end(item_id)
        while len(self._cache) > self.max_items:
            self._cache.popitem(last=False)

    def sync_version(self, version: str | None) -> None:
        """Forget everything cached when the published embedding version changes, so readers
        switch to the new version all at once."""
        if version != getattr(self, "_embedding_version", None):
            self._cache.clear()
            self._embedding_version = version

    def get_many(self, item_ids: Iterable[str]) -> dict[str, dict | None]:
        """Features of each id (None when the item has none): cache first, one fetch for the rest."""
        version_of = getattr(self.store, "embedding_version", None)
        if version_of is not None:
            self.sync_version(version_of())
        out, missing = self.lookup(item_ids)
        if missing:
            self.fill(missing, self.store.get_many(missing), out)
        return out

    def get_one(self, item_id: str) -> dict | None:
        """One item's features: from the cache, else one lookup. The published embedding version
        is checked at most every ``version_check_s``, not per call."""
        now = self.clock()
        version_of = getattr(self.store, "embedding_version", None)
        if version_of is not None and now - self._version_checked >= self.version_check_s:
            self._version_checked = now
            self.sync_version(version_of())
        entry = self._cache.get(item_id)
        if entry is not None and now - entry[0] < self.ttl_s:
            self._cache.move_to_end(item_id)
            self.hits += 1
            return entry[1]
        self.misses += 1
        out: dict[str, dict | None] = {}
        self.fill([item_id], self.store.get_many([item_id]), out)
        return out[item_id]

    def __len__(self) -> int:
        return len(self._cache)
