"""The production manifests load and agree with the code: settings names, entry points, catalog."""
import dataclasses

import pytest
import yaml

from usersignals.settings import REPO_ROOT, Settings, _var

K8S = REPO_ROOT / "infra" / "k8s"
MANIFESTS = [p for p in sorted(K8S.glob("*.yaml")) if p.name != "airflow-values.yaml"]  # that one is Helm values
DOCS = [(p.name, d) for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]
SETTING_VARS = {_var(f.name) for f in dataclasses.fields(Settings)}
# Read outside Settings: the trimmer's metrics port and interval, the admin key.
OTHER_VARS = {"USERSIGNALS_TRIMMER_METRICS_PORT", "USERSIGNALS_TRIM_INTERVAL_S", "USERSIGNALS_ADMIN_KEY"}


def test_every_manifest_parses_and_names_its_kind():
    assert len(DOCS) >= 15
    for name, d in DOCS:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), name


def test_the_settings_configmap_uses_only_real_settings():
    cm = next(d for _, d in DOCS if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "usersignals-settings")
    assert set(cm["data"]) <= SETTING_VARS, set(cm["data"]) - SETTING_VARS
    assert cm["data"]["USERSIGNALS_LAKE_CATALOG_TYPE"] in ("sql", "rest")


def containers(d):
    spec = d.get("spec", {})
    if d["kind"] in ("Deployment", "StatefulSet"):
        return spec["template"]["spec"]["containers"]
    if d["kind"] == "Job":
        return spec["template"]["spec"]["containers"]
    if d["kind"] == "FlinkDeployment":
        return spec["podTemplate"]["spec"]["containers"]
    return []


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in DOCS if d["kind"] in ("Deployment", "StatefulSet")])
def test_long_running_containers_have_limits_probes_and_valid_env(name, doc):
    for c in containers(doc):
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"], (name, c["name"])
        assert "livenessProbe" in c or "readinessProbe" in c, (name, c["name"])
        for e in c.get("env", []):
            if e["name"].startswith("USERSIGNALS_"):
                assert e["name"] in SETTING_VARS | OTHER_VARS, e["name"]


def test_entry_points_exist():
    for _, d in DOCS:
        for c in containers(d):
            cmd = c.get("command") or []
            if cmd[:2] == ["python", "-m"]:
                module = cmd[2].replace(".", "/")
                assert (REPO_ROOT / f"{module}.py").exists() or (REPO_ROOT / module / "__main__.py").exists(), cmd
    flink = next(d for _, d in DOCS if d["kind"] == "FlinkDeployment")
    assert flink["spec"]["job"]["args"][:2] == ["-pym", "streaming.job"]


def test_spark_defaults_mount_the_same_catalog_as_local_spark():
    conf = dict(line.split(None, 1) for line in (K8S / "spark-defaults.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    keys = {"spark.sql.extensions", "spark.sql.catalog.lake", "spark.sql.catalog.lake.type",
            "spark.sql.catalog.lake.uri", "spark.sql.catalog.lake.warehouse", "spark.sql.defaultCatalog"}
    assert keys <= set(conf)
    assert conf["spark.sql.catalog.lake.type"] == "rest" and conf["spark.sql.defaultCatalog"] == "lake"
    assert conf["spark.sql.catalog.lake"] == "org.apache.iceberg.spark.SparkCatalog"
    assert conf["spark.sql.catalog.lake.uri"] == "http://iceberg-rest.usersignals.svc:8181"


def test_airflow_values_point_spark_at_kubernetes():
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    env = {e["name"]: e["value"] for e in values["env"]}
    assert "k8s://" in env["AIRFLOW_CONN_SPARK_DEFAULT"] and values["dags"]["gitSync"]["subPath"] == "dags"


def test_the_api_sets_its_workers_within_its_cpu_request():
    """The default (os.cpu_count(): the node's cores, not the pod's) must not reach a pod."""
    api = next(c for _, d in DOCS if d["kind"] == "Deployment" and d["metadata"]["name"] == "serving"
               for c in containers(d))
    env = {e["name"]: e.get("value") for e in api["env"]}
    cpu = str(api["resources"]["requests"]["cpu"])
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    assert 1 <= int(env["USERSIGNALS_API_WORKERS"]) <= max(1, cores)
