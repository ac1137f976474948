"""The lake sink on the real stack: broker, KV, the PyFlink job and the sink, on Iceberg."""
import os
import signal
import uuid

import pytest

from infra.stack import Stack, free_port, private_settings
from tests.integration.conftest import Producer, event, now_ms, wait_until
from usersignals import lake


@pytest.fixture(scope="module")
def lake_stack(tmp_path_factory):
    settings = private_settings(tmp_path_factory.mktemp("lake"), checkpoint_interval_ms=1000,
                                lake_commit_interval_s=1)
    stack = Stack(settings, components=("broker", "kv", "job", "lake-sink"),
                  job_env={"USERSIGNALS_TRIMMER_METRICS_PORT": str(free_port())})
    stack.start()
    yield stack
    stack.stop()


def rows(settings, table, user_ids, column="event_id"):
    from pyiceberg.expressions import In

    t = lake.load_catalog(settings).load_table(lake.table_id(settings, table))
    field = "user_id" if table != lake.DEAD_LETTERS else "key"
    values = list(user_ids) if field == "user_id" else [u.encode() for u in user_ids]
    return t.scan(row_filter=In(field, values)).to_arrow()


def test_events_land_raw_enriched_and_dead_letters(lake_stack):
    s = lake_stack.settings
    user = f"lake-{uuid.uuid4().hex[:8]}"
    p = Producer(s)
    t0 = now_ms()
    for i in range(50):
        p.send(event(user, i, t0 - i, etype="click" if i % 2 else "view", item=f"i{i % 5}", dwell_ms=i))
    p.send(b"not json", key=user.encode())
    p.send(event(user, 99, t0, etype="nope"))
    p.flush()

    raw = wait_until(lambda: (r := rows(s, lake.RAW_EVENTS, [user])).num_rows >= 50 and r, 90, 0.5, "raw rows")
    assert sorted(raw.column("event_id").to_pylist()) == sorted(f"{user}-{i}" for i in range(50))
    enriched = wait_until(lambda: (r := rows(s, lake.ENRICHED_EVENTS, [user])).num_rows >= 50 and r, 60, 0.5,
                          "enriched rows")
    by_id = {r["event_id"]: r for r in enriched.to_pylist()}
    assert len(by_id) == 50
    assert {r["dataset"] for r in by_id.values()} == {"clicks", "views"}
    assert by_id[f"{user}-3"]["dwell_ms"] == 3 and by_id[f"{user}-3"]["enriched_by"] == "stream"
    dead = wait_until(lambda: (r := rows(s, lake.DEAD_LETTERS, [user])).num_rows >= 2 and r, 60, 0.5, "DLQ rows")
    assert sorted(dead.column("reason").to_pylist()) == ["not_json", "unknown_event_type"]


def test_a_killed_sink_resumes_from_the_lake_without_loss_or_duplicates(lake_stack):
    s = lake_stack.settings
    users = [f"kill-{uuid.uuid4().hex[:8]}-{k}" for k in range(4)]
    p = Producer(s)
    t0 = now_ms()
    sent = []

    def send(lo, hi):
        for i in range(lo, hi):
            u = users[i % len(users)]
            p.send(event(u, i, t0 - i))
            sent.append(f"{u}-{i}")
        p.flush()

    send(0, 2000)
    wait_until(lambda: rows(s, lake.RAW_EVENTS, users).num_rows > 0, 60, 0.2, "first commit")
    sink = lake_stack.component("lake-sink")
    os.killpg(sink.proc.pid, signal.SIGKILL)  # no chance to land its buffer
    sink.proc.wait()
    send(2000, 4000)
    lake_stack._spawn(sink)
    raw = wait_until(lambda: (r := rows(s, lake.RAW_EVENTS, users)).num_rows >= 4000 and r, 120, 0.5,
                     "all rows after the restart")
    ids = raw.column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == 4000  # exactly once in the lake, across the kill
    assert set(ids) == set(sent)
