"""Published model outputs in the KV layer: versioned item embeddings with atomic switch-over.

    {p}:emb:<version>:<item_id>   STRING  JSON list of floats: the item's embedding in that version
    {p}:model:embeddings          HASH    current -> version, previous -> version

Publishing writes every key of a new version first, then switches ``current`` in one
atomic script (the old current becomes ``previous``), so a reader sees one version or the
other, never a mix. Rollback swaps them back. Readers (``usersignals.features``) overlay
the current version's embedding on an item's features; with no published version they
use the ``embedding`` of the item features as before. Every version's embeddings have the
registry's ``model.embedding_dim`` floats (what serving's model-ready tensors carry).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import orjson

_SWITCH = """
local cur = redis.call('HGET', KEYS[1], 'current')
if cur == ARGV[1] then return cur end
if cur then redis.call('HSET', KEYS[1], 'previous', cur) end
redis.call('HSET', KEYS[1], 'current', ARGV[1])
return cur
"""


def pointer_key(prefix: str) -> str:
    return f"{prefix}:model:embeddings"


def embedding_key(prefix: str, version: str, item_id: str) -> str:
    return f"{prefix}:emb:{version}:{item_id}"


def write_embeddings(client, prefix: str, version: str, embeddings: Iterable[tuple[str, Sequence[float]]],
                     chunk: int = 5000) -> int:
    n = 0
    pipe = client.pipeline(transaction=False)
    for item_id, vec in embeddings:
        pipe.set(embedding_key(prefix, version, item_id), orjson.dumps([round(float(x), 6) for x in vec]))
        n += 1
        if n % chunk == 0:
            pipe.execute()
    pipe.execute()
    return n


def current_version(client, prefix: str) -> str | None:
    v = client.hget(pointer_key(prefix), "current")
    return v.decode() if isinstance(v, bytes) else v


def versions(client, prefix: str) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in client.hgetall(pointer_key(prefix)).items()}


def switch(client, prefix: str, version: str) -> str | None:
    """Make ``version`` current atomically; returns the version it replaced."""
    old = client.eval(_SWITCH, 1, pointer_key(prefix), version)
    return old.decode() if isinstance(old, bytes) else old


def rollback(client, prefix: str) -> str:
    """Switch back to the previous version; returns it."""
    v = versions(client, prefix)
    if "previous" not in v:
        raise LookupError("no previous embedding version to roll back to")
    switch(client, prefix, v["previous"])
    return v["previous"]


def drop_versions(client, prefix: str, keep: Iterable[str]) -> int:
    """Delete the keys of every version but ``keep`` (old versions after a switch)."""
    keep = set(keep)
    removed = 0
    batch = []
    for key in client.scan_iter(match=f"{prefix}:emb:*", count=5000):
        k = key.decode() if isinstance(key, bytes) else key
        version = k[len(prefix) + 5:].split(":", 1)[0]
        if version not in keep:
            batch.append(key)
            if len(batch) >= 5000:
                removed += client.unlink(*batch)
                batch = []
    if batch:
        removed += client.unlink(*batch)
    return removed


def overlay(features: Mapping[str, dict], embeddings: Mapping[str, bytes | None]) -> dict[str, dict]:
    """Item features with each item's published embedding (where it has one) as ``embedding``."""
    out = {}
    for item_id, feats in features.items():
        raw = embeddings.get(item_id)
        out[item_id] = {**feats, "embedding": orjson.loads(raw)} if raw is not None else feats
    for item_id, raw in embeddings.items():  # an item with an embedding but no other features
        if item_id not in out and raw is not None:
            out[item_id] = {"embedding": orjson.loads(raw)}
    return out
