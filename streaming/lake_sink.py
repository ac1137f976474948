"""The lake sink: lands the platform's topics in Iceberg, committed on a timer, exactly once.

    .venv/bin/python -m streaming.lake_sink      (main environment: pyiceberg needs pyarrow >= 18)

=====================  =====================
topic                  table
=====================  =====================
user_events            raw_events        (valid events; invalid ones are the DLQ's)
user_events_enriched   enriched_events   (produced by the indexing job, features as stored)
user_events_dlq        dead_letters
served_features        served_features
=====================  =====================

Every ``lake_commit_interval_s`` each table with new rows gets one Iceberg append whose
snapshot summary records the Kafka position it covers (topic id and next offset per
partition). On start the sink resumes from those positions, so a crash or restart
neither loses nor duplicates rows *in the sink*; duplicates that the at-least-once job
put on the enriched topic, or producers put on the events topic, remain and are removed
by the daily job. Offsets are also committed to the consumer group after each append,
for lag monitoring only.

The Flink job writes the enriched topic rather than Iceberg directly: the Iceberg Flink
connector is a JVM jar that no PyPI or Debian package ships, and PyFlink's environment
pins a pyarrow too old for pyiceberg. This process is the Iceberg committer instead.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import orjson

from usersignals import lake
from usersignals.events import InvalidEvent, parse_event
from usersignals.registry import Registry, load_registry
from usersignals.settings import Settings, load_settings

log = logging.getLogger("usersignals.lake_sink")
POSITION_PROPERTY = "usersignals.kafka-position"

Row = dict[str, Any]


class Skip(Exception):
    """A record that does not belong in the table (counted, then passed over)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Record:
    """What the converters need of a Kafka message (keeps them testable without a broker)."""
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    partition: int
    offset: int
    headers: dict[str, bytes] = field(default_factory=dict)


# --- converters: one Kafka record -> one table row --------------------------------------

def raw_row(rec: Record, event_types: Iterable[str], ingested_ms: int) -> Row:
    try:
        # Validated against the broker timestamp, so the verdict does not depend on when we land it.
        e = parse_event(rec.value, rec.key, event_types, now_ms=rec.timestamp_ms)
    except InvalidEvent as exc:
        raise Skip(exc.reason) from None
    return {"event_id": e.event_id, "user_id": e.user_id, "event_type": e.event_type, "item_id": e.item_id,
            "event_time": e.ts * 1000, "surface": e.surface, "dwell_ms": e.dwell_ms, "query": e.query,
            "kafka_partition": rec.partition, "kafka_offset": rec.offset, "ingested_at": ingested_ms * 1000}


def enriched_row(rec: Record, feature_fields: Iterable[str]) -> Row:
    try:
        obj = orjson.loads(rec.value or b"")
        row = {"event_id": obj["event_id"], "user_id": obj["user_id"], "event_type": obj["event_type"],
               "item_id": obj["item_id"], "event_time": int(obj["ts"]) * 1000, "surface": obj.get("surface"),
               "dwell_ms": obj.get("dwell_ms"), "query": obj.get("query"), "dataset": obj["dataset"],
               "indexed_at": int(obj.get("indexed_at", rec.timestamp_ms)) * 1000, "enriched_by": "stream"}
        feats = obj.get("features") or {}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise Skip("bad_enriched_record") from exc
    for f in feature_fields:
        row[f] = feats.get(f)
    return row


def dlq_row(rec: Record) -> Row:
    h = rec.headers

    def text(name: str) -> str | None:
        v = h.get(name)
        return v.decode("utf-8", "replace") if v is not None else None

    def number(name: str) -> int | None:
        try:
            return int(text(name) or "")
        except ValueError:
            return None

    return {"key": rec.key, "value": rec.value, "reason": text("dlq.reason") or "unknown",
            "detail": text("dlq.detail"), "source_topic": text("dlq.source.topic"),
            "source_partition": number("dlq.source.partition"), "source_offset": number("dlq.source.offset"),
            "received_at": rec.timestamp_ms * 1000}


def served_row(rec: Record) -> Row:
    try:
        obj = orjson.loads(rec.value or b"")
        return {"request_id": obj["request_id"], "tenant": obj["tenant"],
                "config_version": obj.get("config_version"), "served_at": int(obj["ts"]) * 1000,
                "user_id": obj["user_id"], "format": obj.get("format"),
                "features": orjson.dumps(obj.get("features")).decode()}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise Skip("bad_served_record") from exc


# --- positions in snapshot summaries ----------------------------------------------------

def encode_position(topic_id: str, offsets: dict[int, int]) -> str:
    return orjson.dumps({"topic_id": topic_id, "offsets": {str(p): o for p, o in sorted(offsets.items())}}).decode()


def stored_position(table, topic_id: str) -> dict[int, int]:
    """Next offset per partition recorded by the newest sink snapshot for this topic incarnation.

    Other writers' snapshots (daily overwrites, compaction) carry no position and are skipped.
    A different topic id means the topic was recreated: start from the beginning.
    """
    for snap in sorted(table.snapshots(), key=lambda s: s.sequence_number or 0, reverse=True):
        try:
            raw = snap.summary[POSITION_PROPERTY] if snap.summary is not None else None
        except KeyError:
            raw = None
        if raw:
            pos = orjson.loads(raw)
            if pos.get("topic_id") != topic_id:
                return {}
            return {int(p): int(o) for p, o in pos["offsets"].items()}
    return {}


# --- the sink -------------------------------------------------------------------------

class SinkMetrics:
    def __init__(self, registry=None):
        from prometheus_client import Counter, Gauge, Histogram

        kw = {"registry": registry} if registry is not None else {}
        self.rows = Counter("usersignals_lake_rows_total", "Rows committed to Iceberg, by table.", ["table"], **kw)
        self.skipped = Counter("usersignals_lake_skipped_total", "Records not landed, by table and reason.",
                               ["table", "reason"], **kw)
        self.commits = Counter("usersignals_lake_commits_total", "Iceberg appends, by table.", ["table"], **kw)
        self.commit_failures = Counter("usersignals_lake_commit_failures_total",
                                       "Iceberg appends that failed after retries, by table.", ["table"], **kw)
        self.commit_seconds = Histogram("usersignals_lake_commit_seconds", "Duration of one Iceberg append.",
                                        ["table"], **kw)
        self.last_commit = Gauge("usersignals_lake_last_commit_timestamp_seconds",
                                 "When each table last received an append.", ["table"], **kw)
        self.buffered = Gauge("usersignals_lake_buffered_rows", "Rows waiting for the next commit.",
                              ["table"], **kw)


class TopicWriter:
    """Buffers one topic's rows and appends them to its table with the position they reach."""

    def __init__(self, topic: str, table_name: str, convert: Callable[[Record], Row], metrics: SinkMetrics):
        self.topic = topic
        self.table_name = table_name
        self.convert = convert
        self.metrics = metrics
        self.topic_id = ""
        self.rows: list[Row] = []
        self.position: dict[int, int] = {}   # next offset per partition, buffered rows included
        self.committed: dict[int, int] = {}  # next offset per partition in the lake

    def add(self, rec: Record) -> None:
        try:
            self.rows.append(self.convert(rec))
        except Skip as exc:
            self.metrics.skipped.labels(self.table_name, exc.reason).inc()
        self.position[rec.partition] = rec.offset + 1

    @property
    def dirty(self) -> bool:
        return self.position != self.committed

    def flush(self, catalog, ident: str) -> int:
        """Append buffered rows (if any) recording the position; returns rows committed."""
        if not self.dirty:
            return 0
        import pyarrow as pa

        rows, target = self.rows, dict(self.position)
        if not rows:  # only skipped records: nothing to land, nothing to record
            self.committed = target
            return 0
        started = time.perf_counter()
        prop = {POSITION_PROPERTY: encode_position(self.topic_id, target)}

        def commit():
            table = catalog.load_table(ident)
            if stored_position(table, self.topic_id) == target:
                return  # an earlier attempt did commit (its answer was lost)
            table.append(pa.Table.from_pylist(rows, schema=table.schema().as_arrow()), snapshot_properties=prop)

        try:
            lake.with_retries(commit, f"append {ident}")
        except Exception:
            self.metrics.commit_failures.labels(self.table_name).inc()
            raise
        self.rows = []
        self.committed = target
        m = self.metrics
        m.rows.labels(self.table_name).inc(len(rows))
        m.commits.labels(self.table_name).inc()
        m.commit_seconds.labels(self.table_name).observe(time.perf_counter() - started)
        m.last_commit.labels(self.table_name).set(time.time())
        return len(rows)


def writers_for(settings: Settings, registry: Registry, feature_fields: Iterable[str],
                metrics: SinkMetrics, clock=time.time) -> list[TopicWriter]:
    types = tuple(registry.event_types)
    feats = tuple(feature_fields)
    return [
        TopicWriter(settings.events_topic, lake.RAW_EVENTS,
                    lambda r: raw_row(r, types, int(clock() * 1000)), metrics),
        TopicWriter(settings.enriched_topic, lake.ENRICHED_EVENTS, lambda r: enriched_row(r, feats), metrics),
        TopicWriter(settings.dlq_topic, lake.DEAD_LETTERS, dlq_row, metrics),
        TopicWriter(settings.served_topic, lake.SERVED_FEATURES, served_row, metrics),
    ]


class LakeSink:
    def __init__(self, settings: Settings, registry: Registry, catalog, metrics: SinkMetrics | None = None):
        self.settings = settings
        self.catalog = catalog
        self.metrics = metrics or SinkMetrics()
        enriched = catalog.load_table(lake.table_id(settings, lake.ENRICHED_EVENTS))
        feature_fields = lake.feature_columns(f.name for f in enriched.schema().fields)
        self.writers = {w.topic: w for w in writers_for(settings, registry, feature_fields, self.metrics)}
        self.consumer = None

    def _ident(self, w: TopicWriter) -> str:
        return lake.table_id(self.settings, w.table_name)

    def connect(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicCollection, TopicPartition
        from confluent_kafka.admin import AdminClient

        s = self.settings
        admin = AdminClient({"bootstrap.servers": s.broker})
        described = {t: f.result(15) for t, f in
                     admin.describe_topics(TopicCollection(list(self.writers))).items()}
        # Few large fetches: rows wait for the next commit (seconds) anyway.
        self.consumer = Consumer({"bootstrap.servers": s.broker, "group.id": "usersignals-lake-sink",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 500,
                                  "fetch.min.bytes": 256 << 10, "log_level": 3,
                                  "max.partition.fetch.bytes": 4 << 20})
        assignment = []
        for topic, w in self.writers.items():
            d = described[topic]
            w.topic_id = str(d.topic_id)
            stored = stored_position(self.catalog.load_table(self._ident(w)), w.topic_id)
            w.position = dict(stored)
            w.committed = dict(stored)
            for p in d.partitions:
                assignment.append(TopicPartition(topic, p.id, stored.get(p.id, OFFSET_BEGINNING)))
            log.info("%s -> %s from %s", topic, self._ident(w), stored or "the beginning")
        # assign() rather than subscribe(): positions come from the lake, not the group.
        self.consumer.assign(assignment)

    def poll(self, timeout_s: float = 0.2, max_records: int = 5000) -> int:
        msgs = self.consumer.consume(max_records, timeout_s)
        n = 0
        for m in msgs:
            if m.error() is not None:
                log.warning("consume: %s", m.error())
                continue
            w = self.writers[m.topic()]
            w.add(Record(m.key(), m.value(), m.timestamp()[1], m.partition(), m.offset(), dict(m.headers() or [])))
            n += 1
        for w in self.writers.values():
            self.metrics.buffered.labels(w.table_name).set(len(w.rows))
        return n

    def commit(self) -> int:
        from confluent_kafka import TopicPartition

        total = 0
        for w in self.writers.values():
            total += w.flush(self.catalog, self._ident(w))
        offsets = [TopicPartition(t, p, o) for t, w in self.writers.items() for p, o in w.committed.items()]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except Exception as exc:  # informational only: positions live in the lake
                log.debug("group commit: %s", exc)
        return total

    def run(self, stop: threading.Event) -> None:
        self.connect()
        next_commit = time.monotonic() + self.settings.lake_commit_interval_s
        try:
            while not stop.is_set():
                self.poll()
                if time.monotonic() >= next_commit:
                    landed = self.commit()
                    if landed:
                        log.info("committed %d rows", landed)
                    next_commit = time.monotonic() + self.settings.lake_commit_interval_s
            self.commit()  # what was read before the stop signal is landed, not dropped
        finally:
            self.consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Land Kafka topics in the Iceberg lake.")
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from prometheus_client import start_http_server

    settings = load_settings()
    registry = load_registry(settings.registry_path)
    catalog = lake.load_catalog(settings)
    # The tables must exist (`python -m iceberg_schemas`, which the local stack runs first).
    start_http_server(settings.lake_metrics_port, addr=settings.host)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    LakeSink(settings, registry, catalog).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
