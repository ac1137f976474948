"""Validate → enrich → write: the real-time indexer's logic, free of Flink.

``Indexer.accept`` validates and enriches one raw record: it returns the rejection for the
DLQ, or the enriched event (which the Flink operator also emits, for the lake) and buffers
it; item features come from a cache, a miss costs one lookup. A well-formed event of a type
the registry does not index is neither: it is returned as ``Unindexed`` (kept in raw_events,
counted by type) and never reaches the KV layer. ``Indexer.flush`` writes the
buffered batch to the KV layer in one pipelined round trip. The Flink operator calls
``flush`` at the end of every bundle, which Flink completes before each checkpoint, so an
event whose offset is committed is already in the KV layer.
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


@dataclass(frozen=True, slots=True)
class Indexed:
    """A valid event as indexed: its dataset and the item features stored with it."""
    event: Event
    dataset: str
    features: dict
    indexed_at_ms: int


@dataclass(frozen=True, slots=True)
class Unindexed:
    """A well-formed event of a type no dataset is registered for: kept in the lake's raw
    history (a dataset registered later is bootstrapped from it), not indexed."""
    event: Event
    received_at_ms: int


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
        self._buffer: list[tuple[Indexed, str | None]] = []  # with the item's category
        self._appended_ms: list[int] = []   # the broker's append time of each buffered record
        self._fields = {
            et: (ds.name, registry.indexing_fields(ds))
            for et in registry.event_types
            for ds in [registry.dataset_for_type(et)]
        }

    def accept(self, key: bytes | None, value: bytes | None,
               appended_ms: int | None = None) -> Rejection | Indexed | Unindexed:
        """Validate and enrich one record: buffer it for the KV write and return it, return why
        it belongs in the DLQ, or (a type no dataset is registered for) return it unindexed.
        ``appended_ms`` is the record's broker timestamp (epoch ms), from which the ingestion
        lag is measured once the event is written."""
        self.metrics.events_in.inc()
        now_ms = int(self.clock() * 1000)
        try:
            # Any well-formed type: the registry decides what is indexed, not what is kept.
            event = parse_event(value, key, None, now_ms, self.limits)
        except InvalidEvent as exc:
            self.metrics.dlq(exc.reason)
            return Rejection(exc.reason, exc.detail)
        if event.event_type not in self._fields:
            self.metrics.unindexed(event.event_type)
            return Unindexed(event, now_ms)
        dataset, fields = self._fields[event.event_type]
        item = self.features.get_one(event.item_id)
        if item is None:
            self.metrics.missing_features.inc()
            enrichment = {}
        else:
            self.metrics.enriched.inc()
            enrichment = {f: item[f] for f in fields if f in item}
        indexed = Indexed(event, dataset, enrichment, now_ms)
        self._buffer.append((indexed, item.get("category") if item else None))
        if appended_ms is not None and appended_ms > 0:   # Kafka's "no timestamp" is -1
            self._appended_ms.append(appended_ms)
        return indexed

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def flush(self) -> int:
        """Write everything buffered; returns the number of events written.

        On a KV error the batch stays buffered and the error propagates, so Flink
        fails the task and replays from the last checkpoint: nothing is lost.
        """
        if not self._buffer:
            return 0
        batch = self._buffer
        started = time.perf_counter()
        stored = [StoredEvent(i.dataset, i.event.user_id, i.event.event_id, i.event.ts,
                              encode_stored(i.event, i.features)) for i, _ in batch]
        encoded_at = time.perf_counter()
        new = self.store.write(stored)
        if self.aggregates is not None:
            # Only events stored for the first time feed the aggregates: replays do not double count.
            self.aggregates.update((i.event.user_id, c, i.event.ts, i.event.event_type)
                                   for (i, c), is_new in zip(batch, new) if is_new and c)
        if self.enriched_sink is not None:
            self.enriched_sink([(i.event.user_id.encode(),
                                 enriched_record(i.event, i.dataset, i.features, i.indexed_at_ms))
                                for i, _ in batch])
        done = time.perf_counter()
        self._buffer = []
        appended, self._appended_ms = self._appended_ms, []

        now_ms = self.clock() * 1000
        m = self.metrics
        m.enrich_seconds.observe(encoded_at - started)
        m.kv_write_seconds.observe(done - encoded_at)
        m.batch_size.observe(len(batch))
        per_dataset: dict[str, int] = {}
        for s in stored:
            per_dataset[s.dataset] = per_dataset.get(s.dataset, 0) + 1
            m.lag_seconds.observe(max(0.0, (now_ms - s.ts) / 1000.0))
        for dataset, n in per_dataset.items():
            m.kv_writes(dataset, n)
        for at_ms in appended:
            m.ingestion_lag_seconds.observe(max(0.0, (now_ms - at_ms) / 1000.0))
        return len(stored)
