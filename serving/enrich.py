"""Stage 3, enrich: join serving-time enrichments (item features not stored at indexing).

One batched lookup per request for every item of every user, through an in-process
cache; items without features keep an empty value and are counted by the caller.
"""
from __future__ import annotations

import time

import numpy as np
import orjson

from usersignals.features import CachedFeatures, item_key
from usersignals.models import embedding_key, overlay, pointer_key
from usersignals.registry import Registry, Tenant

from serving.columns import item_ids
from serving.kv_client import as_kv
from serving.model import UserSequences


# Key, in a cached item's features, of its embedding as little-endian float32 bytes: model-ready
# arrays join those in bulk. Never copied into events (only the tenant's fields are).
EMBEDDING_F32 = "embedding:f32"


class Enricher:
    def __init__(self, kv, registry: Registry, prefix: str, cache: CachedFeatures):
        self.kv = as_kv(kv)
        self.registry = registry
        self.prefix = prefix
        self.cache = cache
        self._version: tuple[float, str | None] | None = None

    async def embedding_version(self) -> str | None:
        """The published model version of item embeddings, re-read at most once a second."""
        now = time.monotonic()
        if self._version is None or now - self._version[0] >= 1.0:
            v = await self.kv.hget(pointer_key(self.prefix), "current")
            self._version = (now, v.decode() if isinstance(v, bytes) else v)
        return self._version[1]

    def served_version(self, tenant: Tenant) -> str | None | bool:
        """The embeddings' version this tenant's responses join (None: none published), or False
        when the tenant is not served embeddings; as of the last ``apply``."""
        if "embedding" not in self.fields(tenant):
            return False
        return self._version[1] if self._version is not None else None

    def fields(self, tenant: Tenant) -> tuple[str, ...]:
        return self.registry.fields_of(tenant.enrichments)

    async def apply(self, users: list[UserSequences], tenant: Tenant, attach: bool = True) -> tuple[int, dict]:
        """Adds the tenant's enrichment fields to each event's features (unless ``attach`` is
        False: model-ready arrays join them from the items instead, and sequences may be
        ``Columns``); returns how many events' items had none, and the items' features
        (item_id -> features or None)."""
        fields = self.fields(tenant)
        if not fields:
            return 0, {}
        ids = {i for u in users for seq in u.sequences.values() for i in item_ids(seq)}
        version = await self.embedding_version() if "embedding" in fields else None
        self.cache.sync_version(version)
        found, missing = self.cache.lookup(ids)
        if missing:
            keys = [item_key(self.prefix, i) for i in missing]
            if version is not None:
                keys += [embedding_key(self.prefix, version, i) for i in missing]
            raw = await self.kv.mget(keys)
            fetched = {i: orjson.loads(r) for i, r in zip(missing, raw) if r is not None}
            if version is not None:
                fetched = overlay(fetched, dict(zip(missing, raw[len(missing):])))
            for item in fetched.values():  # once per item while cached: what model-ready arrays join
                vec = item.get("embedding")
                if isinstance(vec, list) and len(vec) == self.registry.model.embedding_dim:
                    item[EMBEDDING_F32] = np.asarray(vec, dtype="<f4").tobytes()
            self.cache.fill(missing, fetched, found)
        if not attach:
            without = {i for i, f in found.items() if f is None}  # usually none: no pass over the events
            return (sum(1 for u in users for seq in u.sequences.values() for i in item_ids(seq) if i in without)
                    if without else 0), found
        absent = 0
        for u in users:
            for evs in u.sequences.values():
                for e in evs:
                    item = found.get(e["item_id"])
                    feats = e.setdefault("features", {})
                    if item is None:
                        absent += 1
                        continue
                    for f in fields:
                        if f in item:
                            feats[f] = item[f]
        return absent, found
