"""Behaviour of the KV layer on real Redis-protocol servers: one suite, every backend.

``redis``: a single redis-server. ``cluster``: a real 3-master Redis Cluster (redis-server
in cluster mode, 16384 slots split three ways), which proves the key design works sharded:
a user's keys share a slot through the ``{user_id}`` hash tag, so multi-dataset reads and
trims are single-node scripts, while the dirty sets spread over the masters.
"""
import subprocess
import time

import orjson
import pytest

from usersignals.kv import SequenceStore, StoredEvent, connect, decode_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """Three redis-server masters in cluster mode on free ports; yields the cluster client."""
    base = tmp_path_factory.mktemp("cluster")
    ports = [_cluster_port() for _ in range(3)]
    procs = []
    for port in ports:
        d = base / str(port)
        d.mkdir()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(d / "nodes.conf"), "--dir", str(d), "--save", "", "--appendonly", "no",
             "--protected-mode", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for port in ports:
            _wait(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                         text=True).stdout.strip() == "PONG")
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        _wait(lambda: "cluster_state:ok" in subprocess.run(
            ["redis-cli", "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True).stdout)
        client = connect(f"redis://127.0.0.1:{ports[0]}/0", cluster=True)
        assert len(client.get_primaries()) == 3
        yield client
        client.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free and valid too."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 29999)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


def _wait(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("redis cluster did not come up")
        time.sleep(0.1)


@pytest.fixture(params=["redis", "cluster"])
def backend(request, registry):
    if request.param == "redis":
        client = request.getfixturevalue("kv_client")
    else:
        from redis.cluster import RedisCluster

        client = request.getfixturevalue("redis_cluster")
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    return SequenceStore(client, registry, prefix="t")


def _all_nodes(client):
    from redis.cluster import RedisCluster

    return {"target_nodes": RedisCluster.ALL_NODES} if hasattr(client, "get_primaries") else {}


def _command_stats(client) -> set[str]:
    info = client.info("commandstats", **_all_nodes(client))
    if hasattr(client, "get_primaries"):  # one dict per node
        return {k for per_node in info.values() for k in per_node}
    return set(info)


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


def test_trimming_keeps_exactly_the_newest_n_and_their_payloads(backend, registry):
    kv_client = backend.client
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


def test_several_datasets_come_back_in_one_round_trip(backend, monkeypatch):
    kv_client = backend.client
    backend.write([ev("clicks", "u", 1, 1), ev("views", "u", 2, 2), ev("views", "u", 3, 3)])
    backend.read("u", {"clicks": 1})  # loads the script once
    sent = []
    real = kv_client.execute_command
    monkeypatch.setattr(kv_client, "execute_command", lambda *a, **kw: sent.append(a[0]) or real(*a, **kw))
    out = backend.read("u", {"clicks": 5, "views": 1, "repins": 5})
    assert ids(out["clicks"]) == ["e1"] and ids(out["views"]) == ["e3"] and out["repins"] == []
    assert sent == ["EVALSHA"]


def test_inserts_never_read_the_sequence(backend):
    kv_client = backend.client
    kv_client.config_resetstat(**_all_nodes(kv_client))
    backend.write([ev("clicks", f"u{k}", i, i) for k in range(20) for i in range(5)])  # many slots
    calls = _command_stats(kv_client)
    # (a cluster client may also ask a node for the slot map)
    assert calls - {"cmdstat_cluster|slots", "cmdstat_cluster|shards", "cmdstat_cluster", "cmdstat_info"} <= {
        "cmdstat_hset", "cmdstat_zadd", "cmdstat_sadd", "cmdstat_config|resetstat", "cmdstat_config"}, calls


def test_unknown_dataset_and_bad_limit_are_clear_errors(backend):
    with pytest.raises(KeyError, match="unknown dataset"):
        backend.read("u", {"nope": 1})
    with pytest.raises(ValueError, match="positive"):
        backend.read("u", {"clicks": 0})


def test_aggregates_decay_and_take_late_events_without_client_reads(backend, registry):
    from usersignals.aggregates import HALF_LIFE_MS, TTL_MS, AggregateStore, agg_key, decode_state

    kv_client = backend.client

    agg = AggregateStore(kv_client, registry, prefix="t")
    t0 = 1_800_000_000_000
    agg.update([("u", "c1", t0, "click")])                        # weight 2 (the registry's aggregate_weight)
    agg.update([("u", "c1", t0 + HALF_LIFE_MS, "click")])         # 2 * 0.5 + 2 = 3
    agg.update([("u", "c1", t0, "click")])                        # late: 3 + 2 * 0.5 = 4
    state = decode_state(kv_client.hgetall(agg_key("t", "u")), t0 + HALF_LIFE_MS)
    assert state["c1"] == pytest.approx(4.0)
    assert TTL_MS - 60_000 < kv_client.pttl(agg_key("t", "u")) <= TTL_MS   # renewed by the last update
