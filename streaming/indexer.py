"""Validate → enrich → write: the real-time indexer's logic, free of Flink.

``Indexer.accept`` validates one raw record (returning the rejection for the DLQ, or
buffering the event); ``Indexer.flush`` enriches the buffered batch with one feature
lookup and writes it to the KV layer in one pipelined round trip. The Flink operator
calls ``flush`` at the end of every bundle, which Flink completes before each
checkpoint, so an event whose offset is committed is already in the KV layer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import orjson

from usersignals.aggregates import AggregateStore
from usersignals.events import DEFAULT_LIMITS, Event, InvalidEvent, Limits, encode_stored, parse_event
from usersignals.features import CachedFeatures
from usersignals.kv import SequenceStore, StoredEvent
from usersignals.registry import Registry

from streaming.metrics import IndexerMetrics


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


def enriched_record(event: Event, dataset: str, features: dict, indexed_at_ms: int) -> bytes:
    """The record on the enriched-events topic: the event, its dataset and features as stored."""
    return orjson.dumps({**event.to_dict(), "dataset": dataset, "indexed_at": indexed_at_ms,
                         "features": features})


class Indexer:
    def __init__(
        self,
        registry: Registry,
        store: SequenceStore,
        features: CachedFeatures,
        metrics: IndexerMetrics,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
        aggregates: AggregateStore | None = None,
        enriched_sink: Callable[[list[tuple[bytes, bytes]]], None] | None = None,
    ):
        self.registry = registry
        self.store = store
        self.features = features
        self.metrics = metrics
        self.aggregates = aggregates
        # Receives (key, enriched-event JSON) of every written batch, for the lake; it must
        # deliver before returning (or raise), so a checkpoint never passes an undelivered event.
        self.enriched_sink = enriched_sink
        self.limits = limits
        self.clock = clock
        self._buffer: list[Event] = []
        self._fields = {
            et: (ds.name, registry.indexing_fields(ds))
            for et in registry.event_types
            for ds in [registry.dataset_for_type(et)]
        }

    def accept(self, key: bytes | None, value: bytes | None) -> Rejection | None:
        """Validate one record: buffer it, or return why it belongs in the DLQ."""
        self.metrics.events_in.inc()
        try:
            event = parse_event(value, key, self._fields, int(self.clock() * 1000), self.limits)
        except InvalidEvent as exc:
            self.metrics.dlq(exc.reason)
            return Rejection(exc.reason, exc.detail)
        self._buffer.append(event)
        return None

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def flush(self) -> int:
        """Enrich and write everything buffered; returns the number of events written.

        On a KV error the batch stays buffered and the error propagates, so Flink
        fails the task and replays from the last checkpoint: nothing is lost.
        """
        if not self._buffer:
            return 0
        batch = self._buffer
        started = time.perf_counter()
        feats = self.features.get_many(e.item_id for e in batch)
        stored: list[StoredEvent] = []
        categories: list[str | None] = []
        enrichments: list[dict] = []
        missing = 0
        for e in batch:
            dataset, fields = self._fields[e.event_type]
            item = feats.get(e.item_id)
            if item is None:
                missing += 1
                enrichment = {}
                categories.append(None)
            else:
                enrichment = {f: item[f] for f in fields if f in item}
                categories.append(item.get("category"))
            enrichments.append(enrichment)
            stored.append(StoredEvent(dataset, e.user_id, e.event_id, e.ts, encode_stored(e, enrichment)))
        enriched_at = time.perf_counter()
        new = self.store.write(stored)
        if self.aggregates is not None:
            # Only events stored for the first time feed the aggregates: replays do not double count.
            self.aggregates.update((e.user_id, c, e.ts, e.event_type)
                                   for e, c, is_new in zip(batch, categories, new) if is_new and c)
        if self.enriched_sink is not None:
            indexed_at = int(self.clock() * 1000)
            self.enriched_sink([
                (e.user_id.encode(), enriched_record(e, s.dataset, f, indexed_at))
                for e, s, f in zip(batch, stored, enrichments)])
        done = time.perf_counter()
        self._buffer = []

        now_ms = self.clock() * 1000
        m = self.metrics
        m.enriched.inc(len(batch) - missing)
        if missing:
            m.missing_features.inc(missing)
        m.enrich_seconds.observe(enriched_at - started)
        m.kv_write_seconds.observe(done - enriched_at)
        m.batch_size.observe(len(batch))
        per_dataset: dict[str, int] = {}
        for s in stored:
            per_dataset[s.dataset] = per_dataset.get(s.dataset, 0) + 1
            m.lag_seconds.observe(max(0.0, (now_ms - s.ts) / 1000.0))
        for dataset, n in per_dataset.items():
            m.kv_writes(dataset, n)
        return len(stored)
