"""Prometheus metrics of the real-time indexer.

Python workers of the Flink job are separate processes; they write metric values to
``PROMETHEUS_MULTIPROC_DIR`` and the job's driver serves the sum on one port.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from usersignals.events import REASONS

_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000)
# Distinct event_type labels of the unindexed counter per worker; later types share OTHER_EVENT_TYPES,
# which no registered type can be named (registry names are [a-z][a-z0-9_]*).
MAX_UNINDEXED_TYPES = 100
OTHER_EVENT_TYPES = "(other)"


class IndexerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        kw = {"registry": registry} if registry is not None else {}
        self.events_in = Counter("usersignals_indexer_events_in_total",
                                 "Records read from the events topic.", **kw)
        self.enriched = Counter("usersignals_indexer_events_enriched_total",
                                "Events indexed with item features found.", **kw)
        self.missing_features = Counter("usersignals_indexer_items_without_features_total",
                                        "Events indexed with empty enrichment: item had no features.", **kw)
        self._dlq = Counter("usersignals_indexer_dlq_total",
                            "Records sent to the dead-letter topic, by reason.", ["reason"], **kw)
        self._unindexed = Counter("usersignals_indexer_unindexed_events_total",
                                  "Well-formed events of a type no dataset is registered for: kept in raw_events, "
                                  "not indexed, by event type.", ["event_type"], **kw)
        self._kv_writes = Counter("usersignals_indexer_kv_writes_total",
                                  "Events written to the KV layer, by dataset.", ["dataset"], **kw)
        # How old events are when indexed: late events (valid up to an hour by the event contract)
        # raise it on an idle stack, so it is for dashboards, never for paging.
        self.lag_seconds = Histogram("usersignals_indexer_end_to_end_lag_seconds",
                                     "Now minus event time when the event is written to the KV layer.",
                                     buckets=_LAG_BUCKETS, **kw)
        # What an operator can act on: how far behind the broker the indexer writes. The events
        # topic stamps each record when the broker appends it (LogAppendTime, infra/kafka.py).
        self.ingestion_lag_seconds = Histogram(
            "usersignals_indexer_ingestion_lag_seconds",
            "Now minus the broker's append time of the record when its event is written to the KV layer.",
            buckets=_LAG_BUCKETS, **kw)
        self.kv_write_seconds = Histogram("usersignals_indexer_kv_write_seconds",
                                          "Duration of one pipelined batch write to the KV layer.",
                                          buckets=_FAST_BUCKETS, **kw)
        self.enrich_seconds = Histogram("usersignals_indexer_enrich_seconds",
                                        "Duration of encoding one batch for the KV write (features are looked up per event, from a cache).",
                                        buckets=_FAST_BUCKETS, **kw)
        self.batch_size = Histogram("usersignals_indexer_batch_size_events",
                                    "Events per KV write batch (one per Flink bundle).",
                                    buckets=_SIZE_BUCKETS, **kw)
        # With the broker's log end offset (kafka_log_logendoffset) this gives the consumer lag in
        # records per partition; "livemax": a restarted worker's replay does not keep a stale max.
        self._offset = Gauge("usersignals_indexer_source_offset",
                             "Offset of the last record read from the events topic, by partition.",
                             ["partition"], multiprocess_mode="livemax", **kw)
        self._offset_children: dict = {}
        # Children created up front so every reason shows as 0 before the first rejection.
        self._dlq_children = {r: self._dlq.labels(r) for r in REASONS}
        self._kv_children: dict = {}
        self._unindexed_children: dict = {}

    def dlq(self, reason: str) -> None:
        self._dlq_children[reason].inc()

    def unindexed(self, event_type: str) -> None:
        child = self._unindexed_children.get(event_type)
        if child is None:
            # Types come from producers, not the registry: past a bound, one label for the rest,
            # so a stream of made-up types cannot grow the metric without limit.
            if len(self._unindexed_children) >= MAX_UNINDEXED_TYPES:
                event_type = OTHER_EVENT_TYPES
                child = self._unindexed_children.get(event_type)
            if child is None:
                child = self._unindexed_children[event_type] = self._unindexed.labels(event_type)
        child.inc()

    def kv_writes(self, dataset: str, n: int = 1) -> None:
        child = self._kv_children.get(dataset)
        if child is None:
            child = self._kv_children[dataset] = self._kv_writes.labels(dataset)
        child.inc(n)

    def source_offset(self, partition: int, offset: int) -> None:
        child = self._offset_children.get(partition)
        if child is None:
            child = self._offset_children[partition] = self._offset.labels(str(partition))
        child.set(offset)


class LakeMetrics:
    """What the lake's catalog says of the tables the job writes (its driver polls it): the time
    of each table's newest snapshot, its rows and data files. A commit that stops coming shows here
    whatever the cause (failing checkpoints, a catalog or storage outage)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        kw = {"registry": registry} if registry is not None else {}
        self.last_commit = Gauge("usersignals_lake_last_commit_timestamp_seconds",
                                 "Commit time of the table's current snapshot.", ["table"],
                                 multiprocess_mode="livemax", **kw)
        self.records = Gauge("usersignals_lake_records", "Rows in the table's current snapshot.", ["table"],
                             multiprocess_mode="livemax", **kw)
        self.data_files = Gauge("usersignals_lake_data_files", "Data files in the table's current snapshot "
                                "(many small ones: compaction is due).", ["table"], multiprocess_mode="livemax",
                                **kw)
        self.poll_errors = Counter("usersignals_lake_poll_errors_total",
                                   "Failed reads of the lake's catalog by the job's monitor.", **kw)

    def observe(self, table: str, commit_ms: int, records: int, data_files: int) -> None:
        self.last_commit.labels(table).set(commit_ms / 1000.0)
        self.records.labels(table).set(records)
        self.data_files.labels(table).set(data_files)
