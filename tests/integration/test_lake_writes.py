"""The lake sink on the real stack: broker, KV, the PyFlink job and the sink, on Iceberg."""
import os
import signal
import uuid

import pytest

from infra.stack import Stack, private_settings
from tests.integration.conftest import Producer, event, now_ms, wait_until
from usersignals import lake


@pytest.fixture(scope="module")
def lake_stack(tmp_path_factory):
    settings = private_settings(tmp_path_factory.mktemp("lake"), checkpoint_interval_ms=1000,
                                lake_commit_interval_s=1)
    stack = Stack(settings, components=("broker", "kv", "job", "lake-sink"))
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
        p.send(event(user, i, t0 - i, etype="click" if i % 2 else "view", item=f"nofeat{i % 5}", dwell_ms=i))
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
            p.send(event(u, i, t0 - i, item="nofeat"))
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
    parity = batch("parity", "--sample", "1000", "--watermark-minutes", "0", "--threshold", "0")
    assert parity["mismatched"] == 0 and parity["compared"] >= 10, parity
