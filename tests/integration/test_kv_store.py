"""Behaviour of the KV layer on a real Redis-protocol server.

One suite for every backend: the ``backend`` fixture is where Redis Cluster / Kvrocks
plug in (see issue: reliability and scale-out).
"""
import orjson
import pytest

from usersignals.kv import SequenceStore, StoredEvent, decode_all

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis"])
def backend(request, kv_client, registry):
    return SequenceStore(kv_client, registry, prefix="t")


def ev(dataset, user, n, ts, **payload):
    body = {"event_id": f"e{n}", "item_id": f"i{n}", "ts": ts, **payload}
    return StoredEvent(dataset, user, f"e{n}", ts, orjson.dumps(body))


def ids(rows):
    return [r["event_id"] for r in decode_all(rows)]


def test_out_of_order_inserts_read_back_newest_first(backend):
    order = [5, 1, 9, 3, 7, 2, 8]
    backend.write([ev("clicks", "u", n, 1000 + n) for n in order])
    assert ids(backend.read("u", {"clicks": 10})["clicks"]) == [f"e{n}" for n in sorted(order, reverse=True)]


def test_inserts_across_batches_interleave_by_event_time(backend):
    backend.write([ev("clicks", "u", n, 1000 + n) for n in (10, 30)])
    backend.write([ev("clicks", "u", n, 1000 + n) for n in (20, 5)])
    assert ids(backend.read("u", {"clicks": 10})["clicks"]) == ["e30", "e20", "e10", "e5"]


def test_a_replayed_event_is_stored_once_and_a_repair_overwrites_it(backend):
    backend.write([ev("clicks", "u", 1, 1000, features={"category": "old"})])
    backend.write([ev("clicks", "u", 1, 1000, features={"category": "new"})] * 3)
    rows = decode_all(backend.read("u", {"clicks": 10})["clicks"])
    assert len(rows) == 1 and rows[0]["features"] == {"category": "new"}
    assert backend.length("clicks", "u") == 1


def test_trimming_keeps_exactly_the_newest_n_and_their_payloads(backend, kv_client, registry):
    n = registry.datasets["repins"].retention
    backend.write([ev("repins", "u", i, 10_000 + i) for i in range(3 * n)])
    assert backend.length("repins", "u") == 3 * n  # inserts never trim
    stats = backend.trim_all()
    assert stats.events_removed == 2 * n
    assert backend.length("repins", "u") == n
    assert kv_client.hlen(backend.events_key("repins", "u")) == n
    assert ids(backend.read("u", {"repins": n})["repins"]) == [f"e{i}" for i in range(3 * n - 1, 2 * n - 1, -1)]
    assert 0 < kv_client.ttl(backend.seq_key("repins", "u")) <= registry.datasets["repins"].ttl_days * 86400


def test_reads_never_exceed_retention_even_before_a_trim(backend, registry):
    n = registry.datasets["repins"].retention
    backend.write([ev("repins", "u", i, i) for i in range(n + 7)])
    assert len(backend.read("u", {"repins": 10_000})["repins"]) == n


def test_trim_only_touches_sequences_written_since_the_last_trim(backend):
    backend.write([ev("clicks", "a", 1, 1)])
    assert backend.trim_all().keys_checked == 1
    assert backend.trim_all().keys_checked == 0


def test_several_datasets_come_back_in_one_round_trip(backend, kv_client, monkeypatch):
    backend.write([ev("clicks", "u", 1, 1), ev("views", "u", 2, 2), ev("views", "u", 3, 3)])
    backend.read("u", {"clicks": 1})  # loads the script once
    sent = []
    real = kv_client.execute_command
    monkeypatch.setattr(kv_client, "execute_command", lambda *a, **kw: sent.append(a[0]) or real(*a, **kw))
    out = backend.read("u", {"clicks": 5, "views": 1, "repins": 5})
    assert ids(out["clicks"]) == ["e1"] and ids(out["views"]) == ["e3"] and out["repins"] == []
    assert sent == ["EVALSHA"]


def test_inserts_never_read_the_sequence(backend, kv_client):
    kv_client.config_resetstat()
    backend.write([ev("clicks", "u", i, i) for i in range(50)])
    calls = {k for k in kv_client.info("commandstats")}
    assert calls <= {"cmdstat_hset", "cmdstat_zadd", "cmdstat_sadd", "cmdstat_config|resetstat",
                     "cmdstat_config"}, calls


def test_unknown_dataset_and_bad_limit_are_clear_errors(backend):
    with pytest.raises(KeyError, match="unknown dataset"):
        backend.read("u", {"nope": 1})
    with pytest.raises(ValueError, match="positive"):
        backend.read("u", {"clicks": 0})


def test_aggregates_decay_and_take_late_events_without_client_reads(kv_client):
    from usersignals.aggregates import HALF_LIFE_MS, AggregateStore, agg_key, decode_state

    agg = AggregateStore(kv_client, prefix="t")
    t0 = 1_800_000_000_000
    agg.update([("u", "c1", t0, "click")])                        # weight 2
    agg.update([("u", "c1", t0 + HALF_LIFE_MS, "click")])         # 2 * 0.5 + 2 = 3
    agg.update([("u", "c1", t0, "click")])                        # late: 3 + 2 * 0.5 = 4
    state = decode_state(kv_client.hgetall(agg_key("t", "u")), t0 + HALF_LIFE_MS)
    assert state["c1"] == pytest.approx(4.0)
    assert kv_client.pttl(agg_key("t", "u")) > 0
