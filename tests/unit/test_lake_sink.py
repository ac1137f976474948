"""Lake sink converters and Kafka positions in snapshot summaries (no broker, no catalog)."""
import orjson
import pytest

from streaming.lake_sink import (
    POSITION_PROPERTY, Record, Skip, dlq_row, encode_position, enriched_row, raw_row, served_row, stored_position,
)

NOW = 1_763_000_000_000


def rec(value, key=b"u1", ts=NOW, partition=0, offset=7, headers=None):
    return Record(key, value if isinstance(value, bytes) else orjson.dumps(value), ts, partition, offset,
                  headers or {})


def test_raw_row_converts_ms_to_micros_and_keeps_kafka_position():
    row = raw_row(rec({"event_id": "e", "user_id": "u1", "event_type": "click", "item_id": "i", "ts": NOW - 5,
                       "dwell_ms": 3}, partition=2, offset=9), ["click"], NOW + 1)
    assert row["event_time"] == (NOW - 5) * 1000 and row["ingested_at"] == (NOW + 1) * 1000
    assert (row["kafka_partition"], row["kafka_offset"], row["dwell_ms"], row["surface"]) == (2, 9, 3, None)


@pytest.mark.parametrize("value,reason", [(b"{", "not_json"), ({"event_id": "e"}, "missing_field"),
                                          ({"event_id": "e", "user_id": "u1", "event_type": "nope",
                                            "item_id": "i", "ts": NOW}, "unknown_event_type")])
def test_raw_row_skips_invalid_records_with_the_dlq_reason(value, reason):
    with pytest.raises(Skip) as exc:
        raw_row(rec(value), ["click"], NOW)
    assert exc.value.reason == reason


def test_enriched_row_spreads_features_over_typed_columns():
    row = enriched_row(rec({"event_id": "e", "user_id": "u1", "event_type": "click", "item_id": "i", "ts": NOW,
                            "dataset": "clicks", "indexed_at": NOW + 3, "features": {"category": "c1", "x": 1}}),
                       ["category", "popularity"])
    assert row["category"] == "c1" and row["popularity"] is None and "x" not in row
    assert row["enriched_by"] == "stream" and row["indexed_at"] == (NOW + 3) * 1000
    with pytest.raises(Skip):
        enriched_row(rec({"event_id": "e"}), ["category"])


def test_dlq_row_keeps_bytes_and_reads_headers():
    row = dlq_row(rec(b"\xff\x00", key=None, headers={"dlq.reason": b"not_json", "dlq.source.offset": b"12",
                                                       "dlq.source.partition": b"x"}))
    assert row["value"] == b"\xff\x00" and row["key"] is None
    assert (row["reason"], row["source_offset"], row["source_partition"]) == ("not_json", 12, None)


def test_served_row_keeps_features_as_json():
    row = served_row(rec({"request_id": "r", "tenant": "t", "config_version": 2, "ts": NOW, "user_id": "u",
                          "format": "json", "features": {"clicks": [1, 2]}}))
    assert orjson.loads(row["features"]) == {"clicks": [1, 2]} and row["served_at"] == NOW * 1000


class Snap:
    def __init__(self, seq, props):
        self.sequence_number = seq
        self.summary = props


class FakeTable:
    def __init__(self, snaps):
        self._snaps = snaps

    def snapshots(self):
        return self._snaps


def test_stored_position_takes_the_newest_sink_snapshot_of_this_topic_incarnation():
    snaps = [Snap(1, {POSITION_PROPERTY: encode_position("A", {0: 5, 1: 3})}),
             Snap(2, {POSITION_PROPERTY: encode_position("A", {0: 9, 1: 4})}),
             Snap(3, {})]  # a daily overwrite: no position
    assert stored_position(FakeTable(snaps), "A") == {0: 9, 1: 4}
    assert stored_position(FakeTable(snaps), "B") == {}  # topic recreated: start over
    assert stored_position(FakeTable([]), "A") == {}
