"""The cluster's monitoring comes from the local stack's sources: the PrometheusRule is
infra/prometheus/alerts.yml, the PodMonitors scrape what the local Prometheus scrapes under the same
job names, the brokers export with the local broker's JMX rules, and every metric an alert needs
has a scrape behind it."""
import re

import pytest
import yaml

from infra.k8s import prometheus_rule
from tests.unit.test_k8s_render import K8S, TARGETS, find, render
from usersignals.settings import REPO_ROOT

ALERTS = REPO_ROOT / "infra" / "prometheus" / "alerts.yml"
# The scrape jobs of the local stack's prometheus.yml (infra/stack/components.py write_prometheus_config).
COMPONENTS = (REPO_ROOT / "infra" / "stack" / "components.py").read_text()


def local_jobs() -> set[str]:
    block = COMPONENTS.split("targets = {", 1)[1].split("}", 1)[0]
    return set(re.findall(r'"(\w+)":', block)) - {"prometheus"}


@pytest.fixture(scope="module", params=list(TARGETS))
def rendered(request):
    return request.param, render(request.param)


def monitor_jobs(docs) -> dict[str, dict]:
    """job label -> (PodMonitor's selector, the endpoint's port)."""
    jobs = {}
    for d in docs:
        if d["kind"] != "PodMonitor":
            continue
        for ep in d["spec"]["podMetricsEndpoints"]:
            for r in ep.get("relabelings", []):
                if r.get("targetLabel") == "job":
                    jobs[r["replacement"]] = {"selector": d["spec"]["selector"], "port": ep["port"]}
    return jobs


def test_the_prometheus_rule_is_the_local_alerts_file():
    text = (K8S / "prometheus-rule.yaml").read_text()
    assert text == prometheus_rule.render(ALERTS.read_text()), \
        "infra/k8s/prometheus-rule.yaml is not alerts.yml: run `.venv/bin/python -m infra.k8s.prometheus_rule`"
    rule = yaml.safe_load(text)
    assert rule["kind"] == "PrometheusRule" and rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_an_alert_edited_in_one_place_only_fails_the_check():
    edited = ALERTS.read_text().replace("> 30\n", "> 60\n", 1)
    assert edited != ALERTS.read_text()
    assert prometheus_rule.render(edited) != (K8S / "prometheus-rule.yaml").read_text()


def test_the_cluster_scrapes_the_local_jobs_under_their_names(rendered):
    target, docs = rendered
    jobs = monitor_jobs(docs)
    assert local_jobs() == {"api", "indexer", "trimmer", "broker"}
    assert set(jobs) == local_jobs() | {"flink", "kv", "kafka-exporter"}, (target, set(jobs))
    assert find(docs, "PrometheusRule", "usersignals")["spec"]["groups"]


def container_ports(docs, selector: dict) -> set[str]:
    """The named ports of the pods a selector picks (the manifests' pods, the Flink job's per role)."""
    labels = selector.get("matchLabels", {})
    ports = set()
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            template = d["spec"]["template"]
            if all(template["metadata"]["labels"].get(k) == v for k, v in labels.items()):
                ports |= {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p}
        elif d["kind"] == "FlinkDeployment" and labels == {"app": d["metadata"]["name"]}:   # the operator's label
            for role in ("jobManager", "taskManager"):
                ports |= {p["name"] for c in d["spec"][role]["podTemplate"]["spec"]["containers"]
                          for p in c.get("ports", [])}
    return ports


def test_every_pod_monitor_names_a_port_its_pods_have(rendered):
    target, docs = rendered
    for job, m in monitor_jobs(docs).items():
        if "strimzi.io/cluster" in m["selector"].get("matchLabels", {}):
            assert m["port"] == "tcp-prometheus", (target, job)   # Strimzi's metrics port name
            continue
        assert m["port"] in container_ports(docs, m["selector"]), (target, job, m)


def test_both_flink_roles_serve_the_jobs_metrics(rendered):
    """The driver on the JobManager, the Python workers' sum on each TaskManager: the indexer's
    usersignals_indexer_* (the lag and stall alerts) come from the TaskManagers' workers."""
    target, docs = rendered
    spec = find(docs, "FlinkDeployment", "usersignals-indexer")["spec"]
    conf = spec["flinkConfiguration"]
    assert conf["metrics.reporter.prom.factory.class"] == "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    for role in ("jobManager", "taskManager"):
        ports = {p["name"]: p["containerPort"] for c in spec[role]["podTemplate"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        assert ports == {"metrics": int(conf["metrics.reporter.prom.port"]), "job-metrics": 9250}, (target, role, ports)
    tm = spec["taskManager"]["podTemplate"]["spec"]["containers"]
    multiproc = {c["name"]: {e["name"]: e["value"] for e in c.get("env", [])}["PROMETHEUS_MULTIPROC_DIR"] for c in tm}
    assert multiproc["flink-main-container"] == multiproc["job-metrics"], "the workers write where the server reads"
    assert "start_http_server(9250" in " ".join(tm[1]["args"])


def test_the_brokers_export_with_the_local_brokers_rules(rendered):
    target, docs = rendered
    metrics = find(docs, "Kafka", "usersignals")["spec"]["kafka"]["metricsConfig"]
    ref = metrics["valueFrom"]["configMapKeyRef"]
    data = find(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
    assert metrics["type"] == "jmxPrometheusExporter"
    assert data == (REPO_ROOT / "infra" / "kafka" / "jmx-exporter.yaml").read_text(), target
    assert "kafka_log_$1" in data and "LogEndOffset" in data   # kafka_log_logendoffset: UsersignalsIndexerConsumerLag
    assert find(docs, "Kafka", "usersignals")["spec"]["kafkaExporter"]["groupRegex"] == ".*"


def test_the_kv_memory_alert_reads_the_exporters_metrics(rendered):
    target, docs = rendered
    redis = find(docs, "StatefulSet", "redis-cluster")["spec"]["template"]["spec"]["containers"]
    exporter = next(c for c in redis if c["name"] == "exporter")
    assert exporter["image"].startswith("oliver006/redis_exporter:")
    assert monitor_jobs(docs)["kv"]["port"] == exporter["ports"][0]["name"]
    alerts = {r["alert"]: r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {"redis_memory_used_bytes", "redis_memory_max_bytes"} <= set(re.findall(r"redis_\w+", alerts["UsersignalsKvMemoryHigh"]))
