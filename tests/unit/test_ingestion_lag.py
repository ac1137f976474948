"""Ingestion lag: the indexer measures from the broker's append time of each record, which the
events topic sets (LogAppendTime), so late events (valid by the contract) show as old events,
not as a job that lags."""
import orjson
import pytest
from prometheus_client import CollectorRegistry

from infra import kafka
from streaming.indexer import Indexer
from streaming.metrics import IndexerMetrics
from usersignals.features import CachedFeatures
from usersignals.registry import load_registry
from usersignals.settings import Settings

NOW_MS = 1_800_000_000_000
HOUR_MS = 3600 * 1000


class WrittenEvents:
    """The KV layer as the indexer sees it: every event written is new, unless it is down."""

    def __init__(self):
        self.written = []
        self.down = False

    def write(self, events):
        if self.down:
            raise ConnectionError("KV down")
        self.written.extend(events)
        return [True] * len(events)


class NoItemFeatures:
    def get_many(self, ids):
        return {}


def indexer():
    reg = CollectorRegistry()
    idx = Indexer(load_registry(), WrittenEvents(), CachedFeatures(NoItemFeatures()), IndexerMetrics(reg),
                  clock=lambda: NOW_MS / 1000)
    return idx, reg


def click(n, ts):
    return b"u1", orjson.dumps({"event_id": f"e{n}", "user_id": "u1", "event_type": "click", "item_id": "i1", "ts": ts})


def test_late_events_appended_just_now_have_an_ingestion_lag_of_their_time_at_the_broker():
    idx, reg = indexer()
    # Three events an hour old (valid), appended by the broker 0.2, 0.4 and 0.6 s ago.
    for n, appended_ago_ms in enumerate((200, 400, 600)):
        idx.accept(*click(n, NOW_MS - HOUR_MS), appended_ms=NOW_MS - appended_ago_ms)
    assert reg.get_sample_value("usersignals_indexer_ingestion_lag_seconds_count") == 0  # not written yet
    assert idx.flush() == 3
    assert reg.get_sample_value("usersignals_indexer_ingestion_lag_seconds_count") == 3
    assert reg.get_sample_value("usersignals_indexer_ingestion_lag_seconds_sum") == pytest.approx(1.2)
    assert reg.get_sample_value("usersignals_indexer_ingestion_lag_seconds_bucket", {"le": "1.0"}) == 3
    # The event-time histogram sees the same events an hour old.
    assert reg.get_sample_value("usersignals_indexer_end_to_end_lag_seconds_sum") == pytest.approx(3 * 3600.0)
    assert reg.get_sample_value("usersignals_indexer_end_to_end_lag_seconds_bucket", {"le": "300.0"}) == 0


def test_rejected_records_and_records_without_a_broker_timestamp_are_not_measured():
    idx, reg = indexer()
    idx.accept(b"u1", b"{oops", appended_ms=NOW_MS - 100)
    idx.accept(*click(1, NOW_MS), appended_ms=-1)          # Kafka's "no timestamp"
    idx.accept(*click(2, NOW_MS))                           # a caller that has none
    idx.accept(*click(3, NOW_MS), appended_ms=NOW_MS - 5000)
    assert idx.flush() == 3
    assert reg.get_sample_value("usersignals_indexer_ingestion_lag_seconds_count") == 1
    assert reg.get_sample_value("usersignals_indexer_ingestion_lag_seconds_sum") == pytest.approx(5.0)


def test_a_failed_write_measures_the_batch_once_when_it_is_written():
    idx, reg = indexer()
    idx.store.down = True
    idx.accept(*click(1, NOW_MS), appended_ms=NOW_MS - 1000)
    with pytest.raises(ConnectionError):
        idx.flush()
    assert reg.get_sample_value("usersignals_indexer_ingestion_lag_seconds_count") == 0
    idx.store.down = False
    assert idx.flush() == 1
    assert reg.get_sample_value("usersignals_indexer_ingestion_lag_seconds_count") == 1


def test_the_events_topic_is_stamped_by_the_broker():
    s = Settings()
    assert kafka.timestamp_configs(s) == {s.events_topic: {"message.timestamp.type": "LogAppendTime"}}
