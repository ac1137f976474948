"""Bulk loads into the KV layer from Spark executors.

Each partition writes in pipelined chunks through the same idempotent commands the stream
uses (``SequenceStore.write``: HSET + ZADD per event, one round trip per chunk): a re-run, or
an event the stream also wrote, is stored once; a rewritten payload replaces the old one.
Keys written are marked dirty, so the trimmer cuts them to retention.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from pyspark.sql import DataFrame

from usersignals.settings import Settings


def write_partitions(df: DataFrame, write: Callable[[Iterator], int]) -> int:
    """Run ``write(rows)`` on every partition (on the executors); returns the sum of what they wrote."""
    written = df.sparkSession.sparkContext.accumulator(0)

    def run(rows):
        written.add(write(rows))

    df.foreachPartition(run)
    return int(written.value)


def chunked(rows: Iterable, size: int) -> Iterator[list]:
    batch = []
    for r in rows:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_into_kv(stored: DataFrame, settings: Settings, chunk: int = 5000) -> int:
    """Write rows ``dataset, user_id, event_id, ts, payload`` into the KV store of ``settings``
    (sent to the executors with the closure); returns the number written."""

    def write(rows) -> int:
        from usersignals.kv import SequenceStore, StoredEvent, connect
        from usersignals.registry import load_registry

        store = SequenceStore(connect(settings, socket_timeout=60), load_registry(settings.registry_path),
                              settings.kv_prefix)
        n = 0
        for batch in chunked(rows, chunk):
            store.write([StoredEvent(r.dataset, r.user_id, r.event_id, int(r.ts), r.payload.encode()) for r in batch])
            n += len(batch)
        return n

    return write_partitions(stored, write)


def load_features_into_kv(features: DataFrame, settings: Settings, chunk: int = 5000) -> int:
    """Write item features (one JSON object per item, null fields left out) where enrichment reads them."""
    fields = [c for c in features.columns if c != "item_id"]

    def write(rows) -> int:
        from usersignals.features import ItemFeatureStore
        from usersignals.kv import connect

        store = ItemFeatureStore(connect(settings, socket_timeout=60), settings.kv_prefix)
        n = 0
        for batch in chunked(rows, chunk):
            store.put_many({r.item_id: {f: r[f] for f in fields if r[f] is not None} for r in batch})
            n += len(batch)
        return n

    return write_partitions(features, write)
