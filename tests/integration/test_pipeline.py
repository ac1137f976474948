"""The real path: Apache Kafka → PyFlink job (mini-cluster) → redis-server, and the DLQ."""
import os
import signal
import time

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

from infra.stack import metric_sum, metric_total
from serving.app import create_app
from usersignals.kv import decode_all

from .conftest import event, new_user, now_ms, wait_until

pytestmark = pytest.mark.integration


def read_ids(store, dataset, user, k=1000):
    return [r["event_id"] for r in decode_all(store.read(user, {dataset: k})[dataset])]


def test_out_of_order_events_come_back_in_event_time_order(producer, store):
    user = new_user()
    t = now_ms() - 60_000
    offsets = [30, 10, 50, 20, 40, 0]  # seconds after t, sent in this order
    for n, off in enumerate(offsets):
        producer.send(event(user, n, t + off * 1000, "closeup", dwell_ms=100))
    producer.flush()
    expected = [f"{user}-{n}" for n, _ in sorted(enumerate(offsets), key=lambda x: -x[1])]
    assert wait_until(lambda: read_ids(store, "closeups", user) == expected, message="ordered closeups")


def test_duplicates_are_stored_once(producer, store):
    user = new_user()
    t = now_ms() - 5000
    for _ in range(4):
        for n in range(3):
            producer.send(event(user, n, t + n))
    producer.flush()
    wait_until(lambda: len(read_ids(store, "clicks", user)) == 3, message="3 clicks")
    time.sleep(1.5)  # any late replay would land by now
    assert sorted(read_ids(store, "clicks", user)) == [f"{user}-{n}" for n in range(3)]
    assert store.length("clicks", user) == 3


def test_a_user_with_3n_events_keeps_exactly_the_newest_n_after_trimming(producer, store, registry):
    user = new_user()
    n = registry.datasets["repins"].retention
    t = now_ms() - 100_000
    for i in range(3 * n):
        producer.send(event(user, i, t + i * 10, "repin"))
    producer.flush()
    wait_until(lambda: store.length("repins", user) == 3 * n, message="all repins indexed")
    store.trim_all()
    assert store.length("repins", user) == n
    assert read_ids(store, "repins", user) == [f"{user}-{i}" for i in range(3 * n - 1, 2 * n - 1, -1)]


def test_items_are_enriched_from_the_feature_source_and_unknown_items_are_kept(producer, store, pipeline):
    from usersignals.features import ItemFeatureStore
    from usersignals.kv import connect

    ItemFeatureStore(connect(pipeline.settings.kv_url), pipeline.settings.kv_prefix).put_many(
        {"known-item": {"category": "c9", "popularity": 0.7, "embedding": [0.1, 0.2]}})
    user = new_user()
    producer.send(event(user, 1, now_ms() - 2000, "click", item="known-item"))
    producer.send(event(user, 2, now_ms() - 1000, "click", item="no-such-item"))
    producer.flush()
    rows = wait_until(lambda: (r := decode_all(store.read(user, {"clicks": 5})["clicks"])) and len(r) == 2 and r,
                      message="both clicks")
    by_item = {r["item_id"]: r["features"] for r in rows}
    assert by_item == {"known-item": {"category": "c9", "popularity": 0.7}, "no-such-item": {}}


def dlq_records(settings, timeout=20.0, expect=0, topic="dlq"):
    c = Consumer({"bootstrap.servers": settings.broker, "group.id": f"dlq-check-{time.time()}",
                  "enable.auto.commit": False})
    name = settings.dlq_topic if topic == "dlq" else settings.served_topic
    c.assign([TopicPartition(name, p, 0) for p in range(settings.topic_partitions)])
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (not expect or len(out) < expect):
        m = c.poll(0.3)
        if m is not None and not m.error():
            out.append(m)
    c.close()
    return out


def metrics_text(pipeline) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{pipeline.settings.host}:{pipeline.settings.job_metrics_port}/metrics",
                                timeout=5) as r:
        return r.read().decode()


def test_malformed_events_land_in_the_dlq_with_reasons_while_good_ones_flow(producer, store, pipeline):
    user = new_user()
    t = now_ms() - 1000
    bad = [
        (b"{broken json", user.encode(), "not_json"),
        (orjson.dumps({"event_id": f"{user}-x1", "user_id": user, "event_type": "click", "ts": t}),
         user.encode(), "missing_field"),
        (orjson.dumps(event(user, "x2", str(t))), user.encode(), "bad_type"),
        (orjson.dumps(event(user, "x3", t, "hover", item="")), user.encode(), "bad_value"),
        (orjson.dumps(event(user, "x4", 0)), user.encode(), "ts_out_of_range"),
        (orjson.dumps(event(user, "x5", t)), b"not-the-user", "key_mismatch"),
        (b"\x00\xff" * 10_000, user.encode(), "too_large"),
    ]
    # Well-formed, of a type no dataset is registered for: kept (raw_events), not a dead letter.
    unregistered = orjson.dumps(event(user, "x6", t, "hover"))
    unindexed = "usersignals_indexer_unindexed_events_total"
    hovers_before = metric_sum(metrics_text(pipeline), unindexed, event_type="hover")
    for i in range(5):
        producer.send(event(user, i, t + i, "view"))
    producer.send(unregistered, key=user.encode())
    for value, key, _ in bad:
        producer.send(value, key=key)
    producer.flush()
    wait_until(lambda: len(read_ids(store, "views", user)) == 5, message="good events indexed")
    got = {m.value(): m for m in dlq_records(pipeline.settings, expect=len(bad) + 20) if m.key() in
           (user.encode(), b"not-the-user")}
    assert unregistered not in got
    wait_until(lambda: metric_sum(metrics_text(pipeline), unindexed, event_type="hover") == hovers_before + 1,
               message="the hover counted as unindexed")
    for value, key, reason in bad:
        assert value in got, reason
        m = got[value]
        headers = dict(m.headers())
        assert m.key() == key
        assert headers["dlq.reason"].decode() == reason
        assert headers["dlq.detail"]
        assert headers["dlq.source.topic"].decode() == pipeline.settings.events_topic


def test_the_read_api_serves_what_the_job_indexed(producer, pipeline):
    user = new_user()
    t = now_ms() - 3000
    for n in range(4):
        producer.send(event(user, n, t + n * 100, "search", query=f"q{n}"))
    producer.flush()
    with TestClient(create_app(pipeline.settings)) as client:
        def served():
            r = client.get(f"/v1/users/{user}/events", params={"type": "search", "limit": 3},
                           headers={"X-API-Key": "search-dev-key"})
            return r.json()["events"] if r.status_code == 200 and len(r.json()["events"]) == 3 else None

        events = wait_until(served, message="3 searches via the API")
    assert [e["query"] for e in events] == ["q3", "q2", "q1"]


def test_served_features_come_from_the_job_and_are_logged_to_kafka(producer, pipeline):
    """Events indexed by the real job → aggregates and sequences served → the exact response logged."""
    from usersignals.features import ItemFeatureStore
    from usersignals.kv import connect

    ItemFeatureStore(connect(pipeline.settings.kv_url), pipeline.settings.kv_prefix).put_many(
        {"agg-item": {"category": "c7", "popularity": 0.1, "embedding": [0.0] * 16}})
    user = new_user()
    t = now_ms() - 5000
    for n in range(3):
        producer.send(event(user, n, t + n, "click", item="agg-item"))
    producer.flush()
    admin = {"X-Admin-Key": "admin-dev-key"}
    with TestClient(create_app(pipeline.settings)) as client:
        r = client.put("/v1/tenants/search_ranking", headers=admin,
                       json={"sequences": {"clicks": 5}, "views": ["top_category"], "log_sample_rate": 1.0,
                             "filters": {"dedup_items": False}})
        assert r.status_code == 200

        def served():
            r = client.post("/v1/features", headers={"X-API-Key": "search-dev-key"},
                            json={"tenant": "search_ranking", "user_ids": [user]})
            body = r.json()
            ok = r.status_code == 200 and len(body["users"][0]["sequences"]["clicks"]) == 3
            return body if ok and body["users"][0]["views"]["top_category"] == "c7" else None

        body = wait_until(served, message="clicks and aggregates served")
        client.app.state.feature_logger.close()
    logged = [orjson.loads(m.value()) for m in dlq_records(pipeline.settings, expect=50, topic="served")
              if m.key() == user.encode()]
    mine = [rec for rec in logged if rec["request_id"] == body["request_id"]]
    assert len(mine) == 1
    assert mine[0]["tenant"] == "search_ranking" and mine[0]["config_version"] == body["config_version"]
    assert mine[0]["features"] == body["users"][0]


def job_counter(pipeline):
    return metric_total(pipeline.settings.job_metrics_port, "usersignals_indexer_events_in_total")


def test_a_killed_job_resumes_from_committed_offsets_without_losing_events(producer, store, pipeline):
    """Runs last in this module: it kill -9s the job and starts it again."""
    user = new_user()
    t = now_ms() - 50_000
    first = 3000
    for i in range(first):
        producer.send(event(user, i, t + i, "view", item=f"i{i}"))
    producer.flush()
    wait_until(lambda: store.length("views", user) >= first, message="first batch indexed")
    time.sleep(2.5)  # let at least one checkpoint commit the offsets past the first batch

    job = pipeline.component("job")
    os.killpg(job.proc.pid, signal.SIGKILL)
    job.proc.wait()
    second = 500
    for i in range(first, first + second):  # produced while the job is down
        producer.send(event(user, i, t + i, "view", item=f"i{i}"))
    producer.flush()

    pipeline._spawn(job)
    wait_until(lambda: store.length("views", user) >= first + second, timeout=120, message="second batch")
    store.trim_all()
    retention = store.registry.datasets["views"].retention
    assert read_ids(store, "views", user, retention) == [f"{user}-{i}" for i in
                                                          range(first + second - 1, first + second - 1 - retention, -1)]
    # Resumed from committed offsets: the restarted job read far fewer records than the topic holds.
    wait_until(lambda: (job_counter(pipeline) or 0) >= second, message="restarted job metrics")
    assert job_counter(pipeline) < first
