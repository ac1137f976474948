"""The whole local stack under a real Prometheus: every component scraped and up, the alert
rules loaded, every /metrics endpoint clean under `promtool check metrics`, and the batch
jobs' textfile metrics visible with their own job label."""
import json
import shutil
import subprocess
import urllib.request

import pytest

from batch.progress import Progress
from infra.stack import Stack, private_settings
from usersignals.settings import REPO_ROOT

from .conftest import wait_until

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus (make install)")


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
    groups = json.loads(get(f"{prom}/api/v1/rules"))["data"]["groups"]
    assert sum(len(g["rules"]) for g in groups) >= 10


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
    per partition, once the canary event has gone through."""
    s = stack.settings
    prom = f"http://{s.host}:{s.prometheus_port}"
    dashboard = json.loads((REPO_ROOT / "infra" / "grafana" / "usersignals.json").read_text())
    expr = next(t["expr"] for p in dashboard["panels"] if "consumer lag" in p["title"] for t in p["targets"])

    def lag():
        res = json.loads(get(f"{prom}/api/v1/query?query={urllib.request.quote(expr)}"))["data"]["result"]
        return res or None

    res = wait_until(lag, 60, 1.0, "the consumer lag series")
    assert {r["metric"]["partition"] for r in res} <= {str(p) for p in range(s.topic_partitions)}
    assert all(float(r["value"][1]) >= 0 for r in res), res


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
    import time

    def committed():
        text = get(f"http://{s.host}:{s.job_metrics_port}/metrics")
        for line in text.splitlines():
            if line.startswith('usersignals_lake_last_commit_timestamp_seconds{table="raw_events"}'):
                return float(line.rsplit(" ", 1)[1])
        return None

    last = wait_until(committed, 90, 1.0, "a raw_events commit in the job's metrics")
    assert time.time() - last < 120
