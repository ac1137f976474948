"""A new event type becomes a served dataset by configuration (issue 16, item 2), on real components:
Kafka, Redis, PostgreSQL (the lake's catalog and Airflow's database), the PyFlink job, the API, and
the bootstrap_dataset DAG run by Airflow (``dag.test``, real spark-submit).

The walkthrough of docs/operations/new-event-type.md: share events flow before the type is
registered (the lake keeps them, nothing indexes them); the type and its dataset are added to the
registry file; only the job is restarted, from its retained checkpoint; the API reloads; the DAG
bootstraps the dataset from the lake; the served sequence is history plus stream, newest first,
with no gap and no duplicate at the seam.
"""
import datetime as dt
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request

import pytest

from infra.stack import Stack, metric_sum, private_settings
from tests.integration.conftest import Producer, new_user, now_ms, wait_until
from tests.integration.test_dag_run import run_dag
from usersignals import lake
from usersignals.features import ItemFeatureStore
from usersignals.kv import connect
from usersignals.registry import DEFAULT_REGISTRY_PATH, load_registry

pytestmark = pytest.mark.integration

SHARE = """
[event_types.share]
id = {id}
description = "User shared an item."

[datasets.shares]
event_type = "share"
retention = 50
enrichments = ["item_category"]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("newtype")
    registry_file = data / "registry.toml"
    registry_file.write_text(DEFAULT_REGISTRY_PATH.read_text())   # the default: no share type
    # Two API workers: a reload reaches one, which the other follows (serving.app.follow_registry).
    settings = private_settings(data, checkpoint_interval_ms=1000, bundle_time_ms=20, registry_path=registry_file,
                                api_workers=2)
    s = Stack(settings, components=("broker", "kv", "postgres", "job", "api"))
    s.start()
    yield s
    s.stop()


def api(settings, path, method="GET", headers=None):
    req = urllib.request.Request(f"http://{settings.host}:{settings.api_port}{path}", method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def served_shares(settings, user):
    status, body = api(settings, f"/v1/users/{user}/events?type=share&limit=50",
                       headers={"X-Admin-Key": settings.admin_key})
    assert status == 200, body
    return body["events"]


def raw_ids(settings, user):
    from pyiceberg.expressions import EqualTo

    t = lake.load_catalog(settings).load_table(lake.table_id(settings, lake.RAW_EVENTS))
    return t.scan(row_filter=EqualTo("user_id", user), selected_fields=("event_id",)).to_arrow() \
        .column("event_id").to_pylist()


def restart(stack, name, while_down=lambda: None, timeout_s=120.0):
    """Stop one component as the stack does (its signal, then SIGKILL for what is left of its
    group: Flink's JVM and Python workers), call ``while_down``, start it again."""
    c = stack.component(name)
    os.killpg(c.proc.pid, c.stop_signal)
    try:
        c.proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(c.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    c.proc.wait()
    while_down()
    stack._spawn(c)
    wait_until(c.ready, timeout_s, 0.5, f"{name} ready again")


def test_a_new_event_type_is_served_from_lake_history_and_the_stream(stack):
    s = stack.settings
    registry_file = s.registry_path
    user = new_user()
    # Its category where the stream enriches from (the KV layer) and where bootstrap does (the lake).
    ItemFeatureStore(connect(s.kv_url), s.kv_prefix).put_many({"shared-item": {"category": "c7"}})
    lake.append_rows(lake.load_catalog(s), lake.table_id(s, lake.ITEM_FEATURES),
                     [{"item_id": "shared-item", "category": "c7", "updated_at": dt.datetime.now(dt.timezone.utc)}])
    producer = Producer(s)
    t0 = now_ms() - 60_000
    share = [{"event_id": f"{user}-s{n}", "user_id": user, "event_type": "share", "item_id": "shared-item",
              "ts": t0 + n * 1000} for n in range(8)]

    # 1. Before the type is registered: kept in raw_events, indexed nowhere, not a dead letter.
    for e in share[:5]:
        producer.send(e)
    producer.flush()
    wait_until(lambda: sorted(raw_ids(s, user)) == [e["event_id"] for e in share[:5]], 90, 0.5,
               "the unregistered shares in raw_events")
    status, body = api(s, f"/v1/users/{user}/events?type=share", headers={"X-Admin-Key": s.admin_key})
    assert status == 404 and "'share'" in body["message"]
    metrics = urllib.request.urlopen(f"http://{s.host}:{s.job_metrics_port}/metrics", timeout=5).read().decode()
    assert metric_sum(metrics, "usersignals_indexer_unindexed_events_total", event_type="share") == 5
    assert metric_sum(metrics, "usersignals_indexer_dlq_total") == 0

    # 2. Register the type and its dataset; restart only the job, from its checkpoint.
    shares_id = max(t.id for t in load_registry(registry_file).event_types.values()) + 1
    registry_file.write_text(registry_file.read_text() + SHARE.format(id=shares_id))
    job_log = stack.log_dir / "job.log"
    restores_before = job_log.read_text().count("restoring from checkpoint")

    def produce_while_the_job_is_down():
        producer.send(share[5])
        producer.flush()

    # SIGTERM: the driver cancels the job, whose checkpoints are retained (RETAIN_ON_CANCELLATION).
    restart(stack, "job", produce_while_the_job_is_down, timeout_s=180)
    assert job_log.read_text().count("restoring from checkpoint") == restores_before + 1

    # 3. The API picks up the new dataset without a restart, in every worker.
    api_pid = stack.component("api").proc.pid
    status, body = api(s, "/v1/admin/reload", "POST", {"X-Admin-Key": s.admin_key})
    assert status == 200, body

    def datasets_everywhere():
        # Consecutive answers from whichever worker takes each connection: all must list shares.
        answers = [{d["name"]: d for d in api(s, "/v1/datasets")[1]["datasets"]} for _ in range(10)]
        return all("shares" in a for a in answers) and answers[0]

    shares = wait_until(datasets_everywhere, 15, 0.5, "every API worker serving shares")["shares"]
    assert stack.component("api").proc.pid == api_pid
    assert (shares["event_type"], shares["retention"], shares["enrichments"]) == ("share", 50, ["item_category"])

    # 4. More shares after the restart, and one already in the lake delivered again by the stream.
    for e in (share[6], share[4], share[7]):
        producer.send(e)
    producer.flush()
    stream = [share[7], share[6], share[5], share[4]]
    got = wait_until(lambda: (ev := served_shares(s, user)) and len(ev) >= 4 and ev, 60, 0.3, "streamed shares")
    # The checkpoint's offsets, not the start of the topic: the shares kept before the type was
    # registered (s0..s3) were not read again, so only bootstrap can bring them.
    assert [e["event_id"] for e in got] == [e["event_id"] for e in stream]
    wait_until(lambda: sorted(raw_ids(s, user)) == sorted(e["event_id"] for e in share + [share[4]]), 60, 0.5,
               "every share in raw_events, s4 twice")

    # 5. Bootstrap the dataset from the lake through Airflow's DAG.
    proc = run_dag(s, "bootstrap_dataset", {"datasets": ["shares"], "days": 2})
    assert "DAG_RUN_STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]

    # 6. History from the lake, new events from the stream: newest first, no gap, no duplicate.
    served = served_shares(s, user)
    assert [e["event_id"] for e in served] == [e["event_id"] for e in reversed(share)]
    assert [e["ts"] for e in served] == [e["ts"] for e in reversed(share)]
    assert {e["features"]["category"] for e in served} == {"c7"}   # stream and bootstrap enrich alike
