"""The production manifests load and agree with the code: settings, peers, registry, entry points."""
import dataclasses
import importlib
import importlib.util
import ipaddress
import re
from urllib.parse import urlparse

import pytest
import yaml

from usersignals.registry import load_registry
from usersignals.settings import REPO_ROOT, Settings, _var, load_settings

K8S = REPO_ROOT / "infra" / "k8s"
# The base's resources (airflow-values.yaml is Helm values; kustomizeconfig.yaml and the Spark pod
# template are read by kustomize and spark-submit; test_k8s_render.py checks what they render to).
MANIFESTS = [(K8S / "base" / p).resolve()
             for p in yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]]
DOCS = [(p.name, d) for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]
SETTING_VARS = {_var(f.name) for f in dataclasses.fields(Settings)}


def config_map(name: str) -> dict:
    return next(d for _, d in DOCS if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)


def containers(d):
    spec = d.get("spec", {})
    if d["kind"] in ("Deployment", "StatefulSet", "Job"):
        return spec["template"]["spec"]["containers"]
    if d["kind"] == "FlinkDeployment":
        return spec["podTemplate"]["spec"]["containers"]
    return []


def pod_spec(d) -> dict:
    return d["spec"]["podTemplate"]["spec"] if d["kind"] == "FlinkDeployment" else d["spec"]["template"]["spec"]


def reads_settings(c) -> bool:
    return any(e.get("configMapRef", {}).get("name") == "usersignals-settings" for e in c.get("envFrom", []))


def plain_env(c) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def test_every_manifest_parses_and_names_its_kind():
    assert len(DOCS) >= 15
    for name, d in DOCS:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), name


def test_the_settings_configmap_uses_only_real_settings():
    data = config_map("usersignals-settings")["data"]
    assert set(data) <= SETTING_VARS, set(data) - SETTING_VARS


def is_local(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in DOCS if any(reads_settings(c) for c in containers(d))])
def test_every_pod_finds_its_peers_by_their_service_names(name, doc):
    """config.yaml's settings (with the container's own variables) load, servers bind every
    interface, and no peer address is the pod itself."""
    from tests.unit.test_k8s_render import secret_values

    for c in containers(doc):
        secrets = [secret_values("usersignals")[s["secretRef"]["name"]] for s in c.get("envFrom", []) if "secretRef" in s]
        s = load_settings({**config_map("usersignals-settings")["data"], **{k: v for d in secrets for k, v in d.items()},
                           **plain_env(c)})
        assert s.bind_host == "0.0.0.0", (name, c["name"])
        peers = {"broker": [b.rsplit(":", 1)[0] for b in s.broker.split(",")], "trino": [s.trino_host]}
        if any(s_.get("secretRef", {}).get("name") == "usersignals-kv" for s_ in c.get("envFrom", [])):
            peers["kv"] = [urlparse(s.kv_url).hostname]
        if any(s_.get("secretRef", {}).get("name") == "usersignals-lake-catalog" for s_ in c.get("envFrom", [])):
            peers["catalog"] = [urlparse(s.lake_catalog_uri).hostname]
        for peer, hosts in peers.items():
            for host in hosts:
                assert not is_local(host) and host.endswith(".svc"), (name, c["name"], peer, host)
        assert s.kv_cluster, "redis-cluster.yaml deploys a Redis Cluster: kv_cluster must say so"
        assert urlparse(s.checkpoint_dir).scheme == urlparse(s.savepoint_dir).scheme == "s3"


def test_the_peers_named_are_the_services_the_manifests_deploy():
    from tests.unit.test_k8s_render import secret_values

    s = load_settings({**config_map("usersignals-settings")["data"], **secret_values("usersignals")["usersignals-kv"]})
    services = {d["metadata"]["name"] for _, d in DOCS if d["kind"] == "Service"}
    kafka = next(d for _, d in DOCS if d["kind"] == "Kafka")   # Strimzi's bootstrap Service: <cluster>-kafka-bootstrap
    port = next(lst["port"] for lst in kafka["spec"]["kafka"]["listeners"] if not lst["tls"])
    assert s.broker == f"{kafka['metadata']['name']}-kafka-bootstrap.usersignals.svc:{port}"
    kv = urlparse(s.kv_url)
    assert kv.hostname.split(".")[0] in services and kv.port == 6379


def test_the_job_checkpoints_where_the_operator_restores_from():
    s = load_settings(config_map("usersignals-settings")["data"])
    conf = next(d for _, d in DOCS if d["kind"] == "FlinkDeployment")["spec"]["flinkConfiguration"]
    assert conf["execution.checkpointing.dir"] == s.checkpoint_dir
    assert conf["execution.checkpointing.savepoint-dir"] == s.savepoint_dir


def test_the_production_registry_is_the_default_registry_without_its_keys():
    """infra/k8s/registry.toml (the usersignals-registry ConfigMap) loads, and is the default registry
    but for the tenants' keys, which it leaves empty (the admin sets them: docs/operations/kubernetes.md)."""
    production, default = load_registry(K8S / "registry.toml"), load_registry()
    assert production.tenants and set(production.tenants) == set(default.tenants)
    assert all(t.api_key_sha256 == "" for t in production.tenants.values()), \
        {n: t.api_key_sha256 for n, t in production.tenants.items() if t.api_key_sha256}
    unkeyed = {n: dataclasses.replace(t, api_key_sha256="") for n, t in default.tenants.items()}
    assert dataclasses.replace(production, source="", digest="") == \
        dataclasses.replace(default, source="", digest="", tenants=unkeyed), \
        "infra/k8s/registry.toml differs from usersignals/default_registry.toml beyond the tenants' keys"


def test_every_pod_that_reads_the_registry_mounts_it():
    where = load_settings(config_map("usersignals-settings")["data"]).registry_path
    generated = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["configMapGenerator"]
    assert {"name": "usersignals-registry", "namespace": "usersignals", "files": ["../registry.toml"]} in generated
    for name, d in DOCS:
        for c in containers(d):
            if not reads_settings(c):
                continue
            mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod_spec(d).get("volumes", [])}
            mounted = [v for n, v in volumes.items()
                       if v.get("configMap", {}).get("name") == "usersignals-registry" and mounts.get(n) == str(where.parent)]
            assert mounted, (name, c["name"], f"mounts no usersignals-registry at {where.parent}")


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in DOCS if d["kind"] in ("Deployment", "StatefulSet")])
def test_long_running_containers_have_limits_probes_and_valid_env(name, doc):
    for c in containers(doc):
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"], (name, c["name"])
        assert "livenessProbe" in c or "readinessProbe" in c, (name, c["name"])
        for e in c.get("env", []):
            if e["name"].startswith("USERSIGNALS_"):
                assert e["name"] in SETTING_VARS, e["name"]


def python_entry_points():
    """(manifest, module, arguments) of every container that runs one of our modules."""
    found = []
    for name, d in DOCS:
        for c in containers(d):
            argv = [*(c.get("command") or []), *(c.get("args") or [])]
            if argv[:2] == ["python", "-m"]:
                found.append((name, argv[2], argv[3:]))
        if d["kind"] == "FlinkDeployment":   # PythonDriver's -pym <module> [arguments]
            args = d["spec"]["job"]["args"]
            assert args[0] == "-pym", args
            found.append((name, args[1], args[2:]))
    return found


ENTRY_POINTS = python_entry_points()


def test_the_manifests_run_the_api_the_trimmer_and_the_job():
    assert {m for _, m, _ in ENTRY_POINTS} == {"serving", "usersignals.trimmer", "streaming.job", "iceberg_schemas"}


@pytest.mark.parametrize("manifest,module,args", ENTRY_POINTS)
def test_every_command_names_a_real_entry_point(manifest, module, args):
    """``python -m module args`` would run: the module has a __main__ and takes those arguments."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, (manifest, module)
    if spec.submodule_search_locations:   # a package: python -m runs its __main__
        spec = importlib.util.find_spec(f"{module}.__main__")
        assert spec is not None, (manifest, f"{module} has no __main__")
        main = importlib.import_module(f"{module}.__main__")
    else:
        assert re.search(r'^if __name__ == "__main__":', open(spec.origin).read(), re.M), (manifest, module)
        main = importlib.import_module(module)
    parser = getattr(main, "parser", None)
    if parser is None:
        assert not args, (manifest, module, f"takes no arguments, given {args}")
    else:
        parser().parse_args(args)   # argparse exits (SystemExit) on what it does not accept


def test_a_command_the_module_does_not_take_fails_the_check():
    with pytest.raises(SystemExit):
        test_every_command_names_a_real_entry_point("flink-indexer.yaml", "streaming.job", ["--kv-cluster"])
    with pytest.raises(AssertionError):
        test_every_command_names_a_real_entry_point("services.yaml", "serving", ["--port", "80"])


def test_the_flink_version_is_the_pyflink_pin():
    pin = re.search(r"^apache-flink==(\d+)\.(\d+)\.", (REPO_ROOT / "requirements" / "streaming.lock").read_text(), re.M)
    flink = next(d for _, d in DOCS if d["kind"] == "FlinkDeployment")
    assert flink["spec"]["flinkVersion"] == f"v{pin[1]}_{pin[2]}"


def test_spark_defaults_mount_the_same_catalog_as_local_spark():
    conf = dict(line.split(None, 1) for line in (K8S / "spark-defaults.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    keys = {"spark.sql.extensions", "spark.sql.catalog.lake", "spark.sql.catalog.lake.type", "spark.sql.defaultCatalog"}
    assert keys <= set(conf)
    from usersignals import lake
    local = lake.spark_conf(load_settings(config_map("usersignals-settings")["data"]))
    for key in ("spark.sql.catalog.lake", "spark.sql.catalog.lake.type",
                "spark.sql.catalog.lake.jdbc.schema-version", "spark.sql.catalog.lake.jdbc.init-catalog-tables",
                "spark.sql.catalog.lake.cache-enabled", "spark.sql.defaultCatalog"):
        assert conf[key] == local[key], key
    # The cluster's addresses are the driver's settings (batch/session.py sets them from lake.spark_conf),
    # so an overlay changes them in one place; the file names none.
    for key in ("spark.sql.catalog.lake.uri", "spark.sql.catalog.lake.warehouse"):
        assert key not in conf and key in local, key
    # S3FileIO: the warehouse is on s3://, which the catalog reads through iceberg-aws-bundle (infra/pom.xml).
    assert conf["spark.sql.catalog.lake.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert conf["spark.kubernetes.driverEnv.USERSIGNALS_LAKE_CATALOG_TYPE"] == "sql"


def test_airflow_values_point_spark_at_kubernetes_and_mount_the_registry():
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    env = {e["name"]: e["value"] for e in values["env"]}
    assert "k8s://" in env["AIRFLOW_CONN_SPARK_DEFAULT"] and values["dags"]["gitSync"]["subPath"] == "dags"
    assert "usersignals-settings" in values["extraEnvFrom"]
    registry = next(v["name"] for v in values["volumes"] if v.get("configMap", {}).get("name") == "usersignals-registry")
    assert {"name": registry, "mountPath": "/etc/usersignals", "readOnly": True} in values["volumeMounts"]


def test_the_api_sets_its_workers_within_its_cpu_request():
    """The default (os.cpu_count(): the node's cores, not the pod's) must not reach a pod."""
    api = next(c for _, d in DOCS if d["kind"] == "Deployment" and d["metadata"]["name"] == "serving"
               for c in containers(d))
    env = {e["name"]: e.get("value") for e in api["env"]}
    cpu = str(api["resources"]["requests"]["cpu"])
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    assert 1 <= int(env["USERSIGNALS_API_WORKERS"]) <= max(1, cores)


def test_the_admin_key_comes_from_a_secret_not_the_configmap():
    assert _var("admin_key") not in config_map("usersignals-settings")["data"]
    api = next(c for _, d in DOCS if d["kind"] == "Deployment" and d["metadata"]["name"] == "serving"
               for c in containers(d))
    admin = next(e for e in api["env"] if e["name"] == _var("admin_key"))
    assert admin["valueFrom"]["secretKeyRef"]["name"] == "usersignals-admin"


def test_the_topics_stamped_by_the_broker_locally_are_stamped_so_in_production():
    """The lag alerts read the broker's append time: Strimzi's topics must say LogAppendTime where the
    local stack's do (infra/kafka.timestamp_configs)."""
    from infra.kafka import timestamp_configs

    topics = {d["spec"]["topicName"]: d["spec"].get("config", {})
              for d in yaml.safe_load_all((K8S / "kafka.yaml").read_text()) if d and d["kind"] == "KafkaTopic"}
    settings = load_settings(config_map("usersignals-settings")["data"])
    for topic, config in timestamp_configs(settings).items():
        assert topics[topic].get("message.timestamp.type") == config["message.timestamp.type"], topic
