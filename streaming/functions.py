"""The PyFlink operator around ``Indexer``: records in; one row per well-formed event (main
output: the lake's raw_events, and enriched_events for the indexed ones) and dead letters (side
output: the DLQ topic and dead_letters) out; KV writes per bundle."""
from __future__ import annotations

from pyflink.common import Row
from pyflink.common.typeinfo import Types
from pyflink.datastream import OutputTag, ProcessFunction

from streaming import bundle
from streaming.indexer import Rejection, Unindexed

# (key, value, reason, detail, source_topic, partition, offset): DeadLetterSerializer's input.
DLQ_TYPE = Types.ROW_NAMED(
    ["key", "value", "reason", "detail", "source_topic", "partition", "offset"],
    [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(),
     Types.STRING(), Types.STRING(), Types.INT(), Types.LONG()],
)
DLQ_TAG = OutputTag("dead-letters", DLQ_TYPE)

_FLINK_TYPES = {"STRING": Types.STRING(), "BIGINT": Types.LONG(), "INT": Types.INT(), "DOUBLE": Types.DOUBLE(),
                "FLOAT": Types.FLOAT(), "ARRAY<FLOAT>": Types.BASIC_ARRAY(Types.FLOAT())}


def row_type(fields):
    """A named row type from (name, Flink SQL type) pairs (``streaming.lake_sql``)."""
    return Types.ROW_NAMED([n for n, _ in fields], [_FLINK_TYPES[t] for _, t in fields])


def _feature(value, ftype: str):
    if value is None:
        return None
    if ftype in ("DOUBLE", "FLOAT"):
        return float(value)
    if ftype in ("BIGINT", "INT"):
        return int(value)
    if ftype == "ARRAY<FLOAT>":
        return [float(v) for v in value]
    return str(value)


class IndexEvents(ProcessFunction):
    """Validates each record (rejections go to the DLQ side output) and indexes the rest.

    Good events are buffered and written at the end of the bundle (see ``bundle``).
    Connections are made in ``open`` so the function pickles small.
    """

    def __init__(self, kv_url: str, kv_prefix: str, registry_path: str | None, source_topic: str,
                 kv_cluster: bool = False, broker: str | None = None, enriched_topic: str | None = None,
                 feature_fields: tuple[tuple[str, str], ...] = ()):
        self.kv_url = kv_url
        self.kv_prefix = kv_prefix
        self.registry_path = registry_path
        self.source_topic = source_topic
        self.kv_cluster = kv_cluster
        self.broker = broker
        self.enriched_topic = enriched_topic
        self.feature_fields = tuple(feature_fields)   # enriched_events' feature columns, in order
        self.indexer = None
        self.enriched = None
        self._scheduled = False
        self._offsets: dict[int, int] = {}

    def open(self, runtime_context):
        from usersignals.aggregates import AggregateStore
        from usersignals.features import CachedFeatures, ItemFeatureStore
        from usersignals.kv import SequenceStore, connect
        from usersignals.registry import load_registry

        from streaming.indexer import Indexer
        from streaming.kafka_out import BatchProducer

        bundle.install()
        registry = load_registry(self.registry_path)
        if self.broker and self.enriched_topic:
            self.enriched = BatchProducer(self.broker, self.enriched_topic)
        client = connect(self.kv_url, cluster=self.kv_cluster, socket_timeout=10, health_check_interval=30)
        self.indexer = Indexer(
            registry,
            SequenceStore(client, registry, self.kv_prefix),
            CachedFeatures(ItemFeatureStore(client, self.kv_prefix)),
            _shared_metrics(),
            aggregates=AggregateStore(client, registry, self.kv_prefix),
            enriched_sink=self.enriched.send if self.enriched is not None else None,
        )

    def process_element(self, value, ctx):
        # RawRecordDeserializer's row: the record's timestamp is the broker's append time
        # (the events topic is LogAppendTime), the start of the ingestion lag.
        key, payload, partition, offset, appended_ms = value[0], value[1], value[2], value[3], value[4]
        self._offsets[partition] = offset
        out = self.indexer.accept(key, payload, appended_ms)
        if isinstance(out, Rejection):
            yield DLQ_TAG, Row(key, payload if payload is not None else b"", out.reason,
                               out.detail, self.source_topic, partition, offset)
        elif isinstance(out, Unindexed):
            # No dataset: raw_events keeps it, enriched_events skips it (streaming.lake_sql).
            e = out.event
            yield Row(e.event_id, e.user_id, e.event_type, e.item_id, e.ts, e.surface, e.dwell_ms, e.query,
                      None, out.received_at_ms, partition, offset, *(None for _ in self.feature_fields))
        else:
            e, feats = out.event, out.features
            yield Row(e.event_id, e.user_id, e.event_type, e.item_id, e.ts, e.surface, e.dwell_ms, e.query,
                      out.dataset, out.indexed_at_ms, partition, offset,
                      *(_feature(feats.get(f), t) for f, t in self.feature_fields))
        if not self._scheduled:
            self._scheduled = True
            bundle.pending(self._flush)

    def _flush(self):
        self._scheduled = False
        if self.indexer.pending:
            self.indexer.flush()
        # Published once a bundle, after the KV write: the offset of what is indexed.
        for partition, offset in self._offsets.items():
            self.indexer.metrics.source_offset(partition, offset)
        self._offsets.clear()

    def close(self):
        if self.indexer is not None and self.indexer.pending:
            self.indexer.flush()
        if self.enriched is not None:
            self.enriched.close()


_METRICS = None


def _shared_metrics():
    # One set of collectors per worker process, however many operators it hosts.
    global _METRICS
    if _METRICS is None:
        from streaming.metrics import IndexerMetrics

        _METRICS = IndexerMetrics()
    return _METRICS
