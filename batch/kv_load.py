"""Bulk load of stored events into the KV layer from Spark executors.

Each partition writes in pipelined chunks through ``SequenceStore.write`` (HSET + ZADD
per event, one round trip per chunk), the same idempotent commands the stream uses: a
re-run or an event the stream also wrote stores it once; a rewritten payload replaces
the old one. Keys written are marked dirty, so the trimmer cuts them to retention.
"""
from __future__ import annotations

from pyspark.sql import DataFrame


def load_into_kv(stored: DataFrame, kv_url: str, prefix: str, registry_path: str | None,
                 chunk: int = 5000) -> int:
    """Write rows ``dataset, user_id, event_id, ts, payload``; returns the number written."""
    written = stored.sparkSession.sparkContext.accumulator(0)

    def write_partition(rows):
        from usersignals.kv import SequenceStore, StoredEvent, connect
        from usersignals.registry import load_registry

        store = SequenceStore(connect(kv_url, socket_timeout=60), load_registry(registry_path), prefix)
        batch = []
        for r in rows:
            batch.append(StoredEvent(r.dataset, r.user_id, r.event_id, int(r.ts), r.payload.encode()))
            if len(batch) >= chunk:
                store.write(batch)
                written.add(len(batch))
                batch = []
        if batch:
            store.write(batch)
            written.add(len(batch))

    stored.foreachPartition(write_partition)
    return int(written.value)


def load_features_into_kv(features: DataFrame, kv_url: str, prefix: str, chunk: int = 5000) -> int:
    """Write item features (one JSON object per item, null fields left out) where enrichment reads them."""
    written = features.sparkSession.sparkContext.accumulator(0)
    fields = [c for c in features.columns if c != "item_id"]

    def write_partition(rows):
        from usersignals.features import ItemFeatureStore
        from usersignals.kv import connect

        store = ItemFeatureStore(connect(kv_url, socket_timeout=60), prefix)
        batch = {}
        for r in rows:
            batch[r.item_id] = {f: r[f] for f in fields if r[f] is not None}
            if len(batch) >= chunk:
                store.put_many(batch)
                written.add(len(batch))
                batch = {}
        if batch:
            store.put_many(batch)
            written.add(len(batch))

    features.foreachPartition(write_partition)
    return int(written.value)
