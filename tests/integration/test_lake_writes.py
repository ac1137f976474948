"""The indexing job writes the lake through Iceberg's Flink sink, on the real stack: broker, KV,
PostgreSQL (the catalog) and the PyFlink job, committing on its checkpoints."""
import os
import signal
import uuid

import orjson
import pytest

from infra.stack import Stack, private_settings
from tests.integration.conftest import Producer, event, now_ms, wait_until
from usersignals import lake
from usersignals.features import ItemFeatureStore
from usersignals.kv import connect

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lake_stack(tmp_path_factory):
    settings = private_settings(tmp_path_factory.mktemp("lake"), checkpoint_interval_ms=1000)
    stack = Stack(settings, components=("broker", "kv", "postgres", "job"))
    stack.start()
    yield stack
    stack.stop()


def rows(settings, table, values, field="user_id"):
    from pyiceberg.expressions import In

    t = lake.load_catalog(settings).load_table(lake.table_id(settings, table))
    return t.scan(row_filter=In(field, list(values))).to_arrow()


def record_at(settings, partition: int, offset: int) -> dict:
    """The event at one position of the events topic, read back from the broker."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.broker, "group.id": f"lake-check-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(settings.events_topic, partition, offset)])
        msg = consumer.poll(15)
        assert msg is not None and msg.error() is None, f"no record at {settings.events_topic}[{partition}]@{offset}"
        return orjson.loads(msg.value())
    finally:
        consumer.close()


def test_events_land_raw_enriched_and_dead_letters(lake_stack):
    s = lake_stack.settings
    user = f"lake-{uuid.uuid4().hex[:8]}"
    import datetime as dt

    # The item's features where the platform keeps them: the KV layer (the stream enriches from
    # there) and the lake (the daily job's source, so it finds nothing to repair later).
    ItemFeatureStore(connect(s.kv_url), s.kv_prefix).put_many({"lakeitem": {"category": "c9", "popularity": 0.25}})
    lake.append_rows(lake.load_catalog(s), lake.table_id(s, lake.ITEM_FEATURES),
                     [{"item_id": "lakeitem", "category": "c9", "popularity": 0.25,
                       "updated_at": dt.datetime.now(dt.timezone.utc)}])
    p = Producer(s)
    t0 = now_ms()
    for i in range(50):
        p.send(event(user, i, t0 - i, etype="click" if i % 2 else "view",
                     item="lakeitem" if i < 10 else f"nofeat{i % 5}", dwell_ms=i))
    p.send(b"not json", key=user.encode())
    p.send(event(user, 99, t0, etype="nope"))   # well-formed, of a type no dataset is registered for
    p.send(event(user, 98, 0, etype="nope"))    # malformed (1970): a dead letter whatever its type
    p.flush()

    raw = wait_until(lambda: (r := rows(s, lake.RAW_EVENTS, [user])).num_rows >= 51 and r, 90, 0.5, "raw rows")
    # raw history keeps every well-formed event, registered type or not
    assert sorted(raw.column("event_id").to_pylist()) == sorted([*(f"{user}-{i}" for i in range(50)), f"{user}-99"])
    assert {r["event_id"]: r["event_type"] for r in raw.to_pylist()}[f"{user}-99"] == "nope"
    first = {r["event_id"]: r for r in raw.to_pylist()}[f"{user}-3"]
    assert first["dwell_ms"] == 3
    assert record_at(s, first["kafka_partition"], first["kafka_offset"])["event_id"] == f"{user}-3"
    assert int(first["event_time"].timestamp() * 1000) == t0 - 3
    enriched = wait_until(lambda: (r := rows(s, lake.ENRICHED_EVENTS, [user])).num_rows >= 50 and r, 60, 0.5,
                          "enriched rows")
    by_id = {r["event_id"]: r for r in enriched.to_pylist()}
    assert len(by_id) == 50 and f"{user}-99" not in by_id   # only indexed events are enriched
    assert {r["dataset"] for r in by_id.values()} == {"clicks", "views"}
    assert by_id[f"{user}-3"]["dwell_ms"] == 3 and by_id[f"{user}-3"]["enriched_by"] == "stream"
    # the features stored with the event in the KV layer, as columns
    assert (by_id[f"{user}-3"]["category"], by_id[f"{user}-3"]["popularity"]) == ("c9", 0.25)
    assert by_id[f"{user}-33"]["category"] is None
    dead = wait_until(lambda: (r := rows(s, lake.DEAD_LETTERS, [user.encode()], "key")).num_rows >= 2 and r,
                      60, 0.5, "DLQ rows")
    assert sorted(dead.column("reason").to_pylist()) == ["not_json", "ts_out_of_range"]
    assert b"not json" in dead.column("value").to_pylist()
    assert set(dead.column("source_topic").to_pylist()) == {s.events_topic}


def test_served_features_land_from_their_topic(lake_stack):
    from confluent_kafka import Producer as KafkaProducer

    s = lake_stack.settings
    user = f"served-{uuid.uuid4().hex[:8]}"
    p = KafkaProducer({"bootstrap.servers": s.broker})
    good = [{"request_id": f"r{i}", "tenant": "home_feed", "config_version": 3, "ts": now_ms(), "user_id": user,
             "format": "json", "features": {"views": [{"item_id": f"i{i}"}]}} for i in range(3)]
    for rec in good:
        p.produce(s.served_topic, key=user.encode(), value=orjson.dumps(rec))
    p.produce(s.served_topic, key=user.encode(), value=b"{not json")
    p.produce(s.served_topic, key=user.encode(), value=orjson.dumps({"tenant": "x", "user_id": user}))
    p.flush(10)
    served = wait_until(lambda: (r := rows(s, lake.SERVED_FEATURES, [user])).num_rows >= 3 and r, 90, 0.5,
                        "served rows")
    assert sorted(served.column("request_id").to_pylist()) == ["r0", "r1", "r2"]
    row = served.to_pylist()[0]
    assert row["tenant"] == "home_feed" and row["config_version"] == 3 and row["format"] == "json"
    assert orjson.loads(row["features"])["views"][0]["item_id"].startswith("i")


def test_trino_sees_a_commit_of_the_flink_sink_at_once(lake_stack):
    """What the job's sink committed (pyiceberg sees the new snapshot) Trino returns in the very
    next query: the same catalog, no cache in between."""
    import trino as client

    from infra import trino

    s = lake_stack.settings
    with trino.Server(s):
        conn = client.dbapi.connect(host=s.host, port=s.trino_port, user=s.trino_user, catalog=s.lake_catalog,
                                    schema=s.lake_namespace)
        cur = conn.cursor()
        for round_ in range(2):
            user = f"trino-{uuid.uuid4().hex[:8]}"
            p = Producer(s)
            for i in range(20):
                p.send(event(user, i, now_ms() - i, etype="click" if i % 2 else "view", item="nofeat"))
            p.flush()
            wait_until(lambda: rows(s, lake.RAW_EVENTS, [user]).num_rows == 20, 60, 0.1, "the sink's commit")
            cur.execute(f"SELECT count(*), count(DISTINCT event_id) FROM raw_events WHERE user_id = '{user}'")
            assert cur.fetchall() == [[20, 20]], round_
            wait_until(lambda: rows(s, lake.ENRICHED_EVENTS, [user]).num_rows == 20, 60, 0.1, "enriched commit")
            cur.execute(f"SELECT dataset, count(*) FROM lake.usersignals.enriched_events WHERE user_id = '{user}' "
                        "GROUP BY 1 ORDER BY 1")
            assert cur.fetchall() == [["clicks", 10], ["views", 10]]


def test_a_killed_job_resumes_without_loss_or_duplicates_in_the_lake(lake_stack):
    s = lake_stack.settings
    users = [f"kill-{uuid.uuid4().hex[:8]}-{k}" for k in range(4)]
    p = Producer(s)
    t0 = now_ms()
    sent = []

    def send(lo, hi):
        for i in range(lo, hi):
            u = users[i % len(users)]
            p.send(event(u, i, t0 - i, item="nofeat"))
            sent.append(f"{u}-{i}")
        p.flush()

    send(0, 2000)
    wait_until(lambda: rows(s, lake.RAW_EVENTS, users).num_rows > 0, 60, 0.2, "first commit")
    job = lake_stack.component("job")
    os.killpg(job.proc.pid, signal.SIGKILL)  # the JVM and its Python workers, mid-checkpoint
    job.proc.wait()
    send(2000, 4000)
    lake_stack._spawn(job)
    for table in (lake.RAW_EVENTS, lake.ENRICHED_EVENTS):
        got = wait_until(lambda: (r := rows(s, table, users)).num_rows >= 4000 and r, 180, 0.5,
                         f"all {table} rows after the restart")
        ids = got.column("event_id").to_pylist()
        assert len(ids) == len(set(ids)) == 4000, table  # exactly once in the lake, across the kill
        assert set(ids) == set(sent)


def test_daily_recomputation_and_parity_agree_with_what_the_stream_indexed(lake_stack):
    """Stream and batch enrich alike: re-enriching today finds nothing to repair, and the KV
    sequences rebuilt from the lake match the KV layer."""
    import datetime as dt
    import json
    import subprocess
    import sys

    from infra.generator import ItemCatalog, WorkloadConfig, write_features, write_features_to_lake
    from usersignals.settings import REPO_ROOT

    s = lake_stack.settings
    catalog = ItemCatalog(WorkloadConfig(items=50, categories=4))
    write_features(catalog, s.kv_url, s.kv_prefix)
    write_features_to_lake(catalog, s)
    users = [f"par-{uuid.uuid4().hex[:8]}-{k}" for k in range(5)]
    p = Producer(s)
    t0 = now_ms() - 60_000
    n = 0
    for i in range(300):
        u = users[i % 5]
        etype = ["click", "view", "closeup", "repin", "search"][i % 5 if i % 7 else 1]
        p.send(event(u, i, t0 + i, etype=etype, item=f"i{i % 50}", dwell_ms=i))
        n += 1
    p.flush()
    wait_until(lambda: rows(s, lake.ENRICHED_EVENTS, users).num_rows >= n, 90, 0.5, "enriched rows")
    wait_until(lambda: rows(s, lake.RAW_EVENTS, users).num_rows >= n, 30, 0.5, "raw rows")

    def batch(*args):
        proc = subprocess.run([sys.executable, "-m", "batch", *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300, env={**os.environ, **s.to_env()})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    today = dt.datetime.fromtimestamp(t0 / 1000, dt.timezone.utc).date().isoformat()
    daily = batch("daily", "--day", today)
    assert daily["missing"] == 0 and daily["mis_enriched"] == 0, daily
    assert daily["recomputed"] >= n
    parity = batch("parity", "--as-of", dt.datetime.now(dt.timezone.utc).isoformat(), "--sample", "1000",
                   "--watermark-minutes", "0", "--threshold", "0")
    assert parity["mismatched"] == 0 and parity["compared"] >= 9, parity  # this test alone: 9 (user, dataset)
