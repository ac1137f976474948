"""The whole local stack under a real Prometheus: every component scraped and up, the alert
rules loaded, every /metrics endpoint clean under `promtool check metrics`, and the batch
jobs' textfile metrics visible with their own job label."""
import calendar
import json
import shutil
import subprocess
import time
import urllib.request

import orjson
import pytest
import yaml

from batch.progress import Progress
from infra.stack import Stack, private_settings
from usersignals.settings import REPO_ROOT

from .conftest import event, new_user, now_ms, wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus (make install)")]


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(private_settings(tmp_path_factory.mktemp("obs")))   # the trimmer's port among its free ports
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_prometheus_scrapes_every_component_and_loads_the_rules(stack):
    s = stack.settings
    prom = f"http://{s.host}:{s.prometheus_port}"

    def all_up():
        targets = json.loads(get(f"{prom}/api/v1/targets"))["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if health and all(h == "up" for h in health.values()) else None

    health = wait_until(all_up, 60, 1.0, "every scrape target up")
    assert set(health) == {"api", "indexer", "trimmer", "broker", "prometheus", "batch"}
    # Exactly the rules of alerts.yml, group by group, each evaluated without error.
    written = {g["name"]: [r["alert"] for r in g["rules"]] for g in
               yaml.safe_load((REPO_ROOT / "infra" / "prometheus" / "alerts.yml").read_text())["groups"]}
    assert {"UsersignalsIndexerConsumerLag", "UsersignalsComponentDown", *LAG_ALERTS} <= \
        {name for names in written.values() for name in names}

    def evaluated():
        groups = json.loads(get(f"{prom}/api/v1/rules"))["data"]["groups"]
        return groups if all(r.get("lastEvaluation", "").startswith("20") for g in groups for r in g["rules"]) \
            else None

    groups = wait_until(evaluated, 60, 1.0, "every rule evaluated once")
    assert {g["name"]: [r["name"] for r in g["rules"]] for g in groups} == written
    assert [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"] == []


def test_every_metrics_endpoint_passes_promtool(stack):
    s = stack.settings
    ports = {"api": s.api_port, "indexer": s.job_metrics_port, "trimmer": s.trimmer_metrics_port}
    for name, port in ports.items():
        text = get(f"http://{s.host}:{port}/metrics")
        assert "usersignals_" in text, name
        out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (name, out.stdout, out.stderr)


def test_the_dashboards_consumer_lag_comes_from_broker_and_job(stack):
    """The lag panel's query (broker log end offsets minus the job's indexed offsets) answers,
    per partition: the events this test produces show on the broker's side, and once the job
    has indexed them every partition it reads is at lag 0 exactly (not 1: offsets are 0-based)."""
    from confluent_kafka import Producer

    s = stack.settings
    prom = f"http://{s.host}:{s.prometheus_port}"
    dashboard = json.loads((REPO_ROOT / "infra" / "grafana" / "usersignals.json").read_text())
    expr = next(t["expr"] for p in dashboard["panels"] if "consumer lag" in p["title"] for t in p["targets"])

    def query(q):
        return json.loads(get(f"{prom}/api/v1/query?query={urllib.request.quote(q)}"))["data"]["result"]

    def end_offsets():
        res = query(f'sum by (partition) (kafka_log_logendoffset{{topic="{s.events_topic}"}})')
        return {r["metric"]["partition"]: int(float(r["value"][1])) for r in res} or None

    def settled():
        """The end offsets once the job is at lag 0 on them (the stack's canaries in both scrapes)."""
        ends, lag = end_offsets(), {r["metric"]["partition"]: float(r["value"][1]) for r in query(expr)}
        return ends if ends and lag and set(lag.values()) == {0.0} else None

    before = wait_until(settled, 60, 1.0, "the broker's log end offsets, the canaries indexed")
    produced, user = 20, new_user()
    producer = Producer({"bootstrap.servers": s.broker, "enable.idempotence": True})
    for n in range(produced):
        e = event(user, n, now_ms() - 1000 + n)
        producer.produce(s.events_topic, value=orjson.dumps(e), key=user.encode())
    assert producer.flush(15) == 0

    def caught_up():
        ends, lag = end_offsets() or {}, {r["metric"]["partition"]: float(r["value"][1]) for r in query(expr)}
        grown = {p: ends[p] - before.get(p, 0) for p in ends if ends[p] != before.get(p, 0)}
        return (grown, lag) if sum(grown.values()) == produced and lag and set(lag.values()) == {0.0} else None

    grown, lag = wait_until(caught_up, 60, 1.0, "the test's events on the broker and indexed (lag 0)")
    assert len(grown) == 1, grown                     # one key, one partition
    assert set(grown) <= set(lag), (grown, lag)       # the partition written is one the panel shows
    assert set(lag) <= {str(p) for p in range(s.topic_partitions)}


def test_batch_textfile_metrics_reach_prometheus_with_their_job_label(stack):
    s = stack.settings
    p = Progress("parity", s.data_dir / "metrics")
    p.stage("compared", 123)
    p.done()
    prom = f"http://{s.host}:{s.prometheus_port}"

    def visible():
        q = urllib.request.quote('usersignals_batch_rows{job="parity",stage="compared"}')
        res = json.loads(get(f"{prom}/api/v1/query?query={q}"))["data"]["result"]
        return res or None

    res = wait_until(visible, 60, 1.0, "the batch metric in Prometheus")
    assert float(res[0]["value"][1]) == 123


def test_the_job_reports_the_lakes_commits(stack):
    """The job's driver reads the catalog: raw_events' newest commit is recent once the canary
    event has been committed (the stack's checkpoints are its commits)."""
    s = stack.settings

    def committed():
        text = get(f"http://{s.host}:{s.job_metrics_port}/metrics")
        for line in text.splitlines():
            if line.startswith('usersignals_lake_last_commit_timestamp_seconds{table="raw_events"}'):
                return float(line.rsplit(" ", 1)[1])
        return None

    last = wait_until(committed, 90, 1.0, "a raw_events commit in the job's metrics")
    assert time.time() - last < 120


# What UsersignalsIndexerLagging and UsersignalsFreshnessP99High measured before (issue 19): event
# time to KV. Events up to an hour late are valid by the event contract, yet raised it.
EVENT_TIME_P99 = "histogram_quantile(0.99, sum by (le) (rate(usersignals_indexer_end_to_end_lag_seconds_bucket[5m])))"
INGESTION_P99 = "histogram_quantile(0.99, sum by (le) (rate(usersignals_indexer_ingestion_lag_seconds_bucket[5m])))"
LAG_ALERTS = ("UsersignalsIndexerLagging", "UsersignalsFreshnessP99High")
# The late burst: 1,500 events at about 300 a second, enough that the few canaries the stack sent
# while the job was starting (seconds of real ingestion lag each) are under 1% of the 5-minute
# window, and slow enough that a busy 2-core machine keeps up (2,000 at 1,000 a second with a
# Maven build beside the stack: one in seven written 1-2.5 s after its append, p99 2.4 s).
LATE_BURST, LATE_BURST_CHUNK, LATE_BURST_PAUSE_S = 1500, 25, 0.08


def test_events_an_hour_late_raise_no_lag_or_freshness_alert(stack):
    """A burst of valid events an hour old by event time, through the real broker and job: the
    lag and freshness alerts (ingestion time) stay quiet, while the event-time p99 they watched
    before is far over both thresholds on the same data. The producer stamps each record with its
    event time, as many do: the events topic's LogAppendTime replaces it with the broker's."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, ConfigResource

    s = stack.settings
    prom = f"http://{s.host}:{s.prometheus_port}"
    rules = {r["alert"]: r for g in yaml.safe_load((REPO_ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
             ["groups"] for r in g["rules"]}

    def query(expr):
        return json.loads(get(f"{prom}/api/v1/query?query={urllib.request.quote(expr)}"))["data"]["result"]

    def indexed_count():
        """Events in both lag histograms, as Prometheus last scraped them (None before both exist)."""
        res = query("sum(usersignals_indexer_ingestion_lag_seconds_count)"
                    " and sum(usersignals_indexer_end_to_end_lag_seconds_count)")
        return float(res[0]["value"][1]) if res else None

    admin = AdminClient({"bootstrap.servers": s.broker})   # alive until the answer is in
    (configs,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, s.events_topic)]).values()
    assert configs.result(10)["message.timestamp.type"].value == "LogAppendTime"

    # rate() needs a sample of both histograms from before the burst (the canary is in them).
    before = wait_until(indexed_count, 60, 1.0, "both lag histograms in Prometheus")
    user, hour_ago = new_user(), now_ms() - 3600 * 1000
    producer = Producer({"bootstrap.servers": s.broker, "linger.ms": 5, "enable.idempotence": True})
    for n in range(LATE_BURST):
        e = event(user, n, hour_ago + n)
        producer.produce(s.events_topic, value=orjson.dumps(e), key=user.encode(), timestamp=e["ts"])
        if n % LATE_BURST_CHUNK == LATE_BURST_CHUNK - 1:
            producer.poll(0)
            time.sleep(LATE_BURST_PAUSE_S)
    assert producer.flush(15) == 0
    wait_until(lambda: (indexed_count() or 0) >= before + LATE_BURST, 60, 1.0, "the late burst indexed and scraped")
    scraped_at = time.time()

    old = query(f"{EVENT_TIME_P99} > 30")
    assert old and float(old[0]["value"][1]) > 300, old    # the old rules would have gone pending
    (p99,) = query(INGESTION_P99)
    seen = sorted((float(r["metric"]["le"]), round(float(r["value"][1]))) for r in
                  query("sum by (le) (increase(usersignals_indexer_ingestion_lag_seconds_bucket[5m]))"))
    assert float(p99["value"][1]) < 2, f"p99 {p99['value'][1]} s; events at or under each bound: {seen}"
    for name in LAG_ALERTS:
        assert query(rules[name]["expr"]) == [], (name, p99)   # the alert's condition, without `for:`

    def evaluated_since_the_burst():
        groups = json.loads(get(f"{prom}/api/v1/rules?type=alert"))["data"]["groups"]
        lag_rules = {r["name"]: r for g in groups for r in g["rules"] if r["name"] in LAG_ALERTS}
        fresh = all(calendar.timegm(time.strptime(r["lastEvaluation"][:19], "%Y-%m-%dT%H:%M:%S")) > scraped_at
                    for r in lag_rules.values())
        return lag_rules if len(lag_rules) == len(LAG_ALERTS) and fresh else None

    for name, rule in wait_until(evaluated_since_the_burst, 45, 1.0, "a rule evaluation after the burst").items():
        assert (rule["health"], rule["state"]) == ("ok", "inactive"), (name, rule)
    alerts = json.loads(get(f"{prom}/api/v1/alerts"))["data"]["alerts"]
    assert not [a for a in alerts if a["labels"]["alertname"] in LAG_ALERTS], alerts
