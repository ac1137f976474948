"""The manifests as kustomize renders them (build/bin/kustomize, `make install`), the base and the
example overlay: every pod's settings load, every peer is a Service of the rendered namespace, the
images carry the overlay's tag. What `make k8s-render OVERLAY=example` prints is what is checked."""
import dataclasses
import re
import shlex
import subprocess
from urllib.parse import urlparse

import pytest
import yaml

from usersignals.settings import REPO_ROOT, Settings, _var, load_settings

K8S = REPO_ROOT / "infra" / "k8s"
KUSTOMIZE = REPO_ROOT / "build" / "bin" / "kustomize"
SETTING_VARS = {_var(f.name) for f in dataclasses.fields(Settings)}
KUBERNETES_DOC = REPO_ROOT / "docs" / "operations" / "kubernetes.md"


def provided(doc: str | None = None) -> dict[tuple[str, str], set[str]]:
    """Step 1's table of docs/operations/kubernetes.md: (kind, name) -> the keys the admin provides."""
    text = KUBERNETES_DOC.read_text() if doc is None else doc
    section = text.split("## 1. What the admin provides", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in ("Secret", "ConfigMap", "ServiceAccount", "PersistentVolumeClaim"):
            rows[(cells[0], cells[1].strip("`"))] = set(re.findall(r"`([^`]+)`", cells[2]))
    return rows


def secret_values(namespace: str) -> dict[str, dict[str, str]]:
    """What step 3's `kubectl create secret` commands put in each Secret, for this namespace, with
    example values in place of the admin's (<user>, <password>, ...)."""
    text = KUBERNETES_DOC.read_text().split("## 3. Secrets", 1)[1].split("\n## ", 1)[0]
    secrets: dict[str, dict[str, str]] = {}
    for command in text.replace("\\\n", " ").splitlines():
        if "create secret generic" not in command:
            continue
        words = shlex.split(command.replace("<namespace>", namespace), comments=True)
        name = words[words.index("generic") + 1]
        for word in words:
            if word.startswith("--from-literal="):
                key, _, value = word.removeprefix("--from-literal=").partition("=")
                value = re.sub(r"\$(\w+)", r"example-\1", value)   # a shell variable of the block: its name
                secrets.setdefault(name, {})[key] = re.sub(r"<user>|<read-only user>", "lake",
                                                           value.replace("<password>", "secret"))
    return secrets
# Where Airflow's pods mount usersignals-spark-defaults (airflow-values.yaml: SPARK_CONF_DIR).
SPARK_CONF_DIR = "/opt/spark-conf"


def render(target: str) -> list[dict]:
    assert KUSTOMIZE.exists(), f"{KUSTOMIZE} is missing: `make install` builds it"
    out = subprocess.run([str(KUSTOMIZE), "build", "--load-restrictor", "LoadRestrictionsNone", str(K8S / target)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def overlay(name: str) -> dict:
    return yaml.safe_load((K8S / "overlays" / name / "kustomization.yaml").read_text())


EXAMPLE = overlay("example")
TARGETS = {"base": ("usersignals", "0.1.0"),
           "overlays/example": (EXAMPLE["namespace"], {i["newTag"] for i in EXAMPLE["images"]}.pop())}


@pytest.fixture(scope="module", params=list(TARGETS))
def rendered(request):
    namespace, tag = TARGETS[request.param]
    return request.param, render(request.param), namespace, tag


def find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def pod_specs(docs):
    """(where, pod spec) of every pod the manifests make, Spark's pod template included."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "FlinkDeployment":
            yield d["metadata"]["name"], d["spec"]["podTemplate"]["spec"]
    spark = find(docs, "ConfigMap", "usersignals-spark-defaults")["data"]
    yield "spark-pod-template.yaml", yaml.safe_load(spark["spark-pod-template.yaml"])["spec"]


def spark_defaults(docs) -> dict[str, str]:
    text = find(docs, "ConfigMap", "usersignals-spark-defaults")["data"]["spark-defaults.conf"]
    return dict(line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def container_settings(docs, where, container, namespace: str) -> Settings:
    """The container's settings as the cluster gives them: its ConfigMaps, and its Secrets as the
    documented commands create them."""
    secrets = secret_values(namespace)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            name = source["secretRef"]["name"]
            assert name in secrets, (where, f"envFrom names the Secret {name}; the doc creates {sorted(secrets)}")
            env.update(secrets[name])
    refs = [{"name": var, "valueFrom": {"secretKeyRef": dict(zip(("name", "key"), ref.split(":")))}}
            for key, ref in spark_defaults(docs).items() if key.startswith("spark.kubernetes.driver.secretKeyRef.")
            for var in [key.rsplit(".", 1)[1]]] if where == "spark-pod-template.yaml" else []
    for e in [*container.get("env", []), *refs]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secrets.get(ref["name"], {}), (where, e, "not a key the doc's commands create")
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    assert set(k for k in env if k.startswith("USERSIGNALS_")) <= SETTING_VARS, (where, set(env) - SETTING_VARS)
    return load_settings(env)


def reads_the_catalog(docs, where, container) -> bool:
    """The pods that open the lake's catalog: the job, the migration and Spark's (spark-defaults.conf)."""
    if where == "spark-pod-template.yaml":
        return "spark.kubernetes.driver.secretKeyRef.USERSIGNALS_LAKE_CATALOG_URI" in spark_defaults(docs)
    return any(s.get("secretRef", {}).get("name") == "usersignals-lake-catalog" for s in container.get("envFrom", []))


def reads_the_kv(container) -> bool:
    """The KV layer's clients load its URL, with the password, from the usersignals-kv Secret."""
    return any(s.get("secretRef", {}).get("name") == "usersignals-kv" for s in container.get("envFrom", []))


def settings_pods(docs):
    for where, spec in pod_specs(docs):
        for c in spec["containers"]:
            if any(s.get("configMapRef", {}).get("name") == "usersignals-settings" for s in c.get("envFrom", [])):
                yield where, c


def test_every_resource_is_in_the_rendered_namespace(rendered):
    target, docs, namespace, _ = rendered
    assert len(docs) >= 20, target
    for d in docs:
        where = d["metadata"]["name"] if d["kind"] == "Namespace" else d["metadata"].get("namespace")
        assert where == namespace, (target, d["kind"], d["metadata"]["name"])


def test_every_pods_settings_load_and_its_peers_are_services_of_the_namespace(rendered):
    target, docs, namespace, _ = rendered
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    kafka = find(docs, "Kafka", "usersignals")
    services |= {f"{kafka['metadata']['name']}-kafka-bootstrap",   # made by Strimzi
                 "trino"}                                          # the Trino chart's release (README.md)
    pods = list(settings_pods(docs))
    assert {w for w, c in pods if reads_the_catalog(docs, w, c)} >= \
        {"lake-migrate", "usersignals-indexer", "spark-pod-template.yaml"}, target
    assert {w for w, _ in pods} >= {"serving", "trimmer", "lake-migrate", "usersignals-indexer",
                                    "spark-pod-template.yaml"}, target
    assert {w for w, c in pods if reads_the_kv(c)} == {"serving", "trimmer", "usersignals-indexer",
                                                       "spark-pod-template.yaml"}, target
    for where, c in pods:
        s = container_settings(docs, where, c, namespace)
        assert s.bind_host == "0.0.0.0" and s.kv_cluster, (target, where)
        hosts = {"broker": [b.rsplit(":", 1)[0] for b in s.broker.split(",")], "trino": [s.trino_host]}
        if reads_the_catalog(docs, where, c):
            hosts["catalog"] = [urlparse(s.lake_catalog_uri).hostname]
        if reads_the_kv(c):
            hosts["kv"] = [urlparse(s.kv_url).hostname]
            assert urlparse(s.kv_url).password == secret_values(namespace)["usersignals-kv"]["password"], \
                (target, where, "the KV URL carries the password the nodes require")
        for peer, names in hosts.items():
            for host in names:
                service, _, rest = host.partition(".")
                assert rest == f"{namespace}.svc" and service in services, (target, where, peer, host, namespace)
        if reads_the_catalog(docs, where, c):
            assert urlparse(s.lake_catalog_uri).password == "secret", (target, where, "the catalog URI is the Secret's")
        for directory in (s.checkpoint_dir, s.savepoint_dir, s.warehouse):
            assert urlparse(directory).scheme == "s3", (target, where, directory)


def test_the_catalog_name_points_at_the_managed_database(rendered):
    target, docs, _, _ = rendered
    db = find(docs, "Service", "lake-catalog-db")
    assert db["spec"]["type"] == "ExternalName" and "." in db["spec"]["externalName"], target


def test_the_indexer_checkpoints_where_the_settings_say(rendered):
    target, docs, _, _ = rendered
    s = load_settings(find(docs, "ConfigMap", "usersignals-settings")["data"])
    conf = find(docs, "FlinkDeployment", "usersignals-indexer")["spec"]["flinkConfiguration"]
    assert conf["execution.checkpointing.dir"] == s.checkpoint_dir, target
    assert conf["execution.checkpointing.savepoint-dir"] == s.savepoint_dir, target


def images(docs):
    for where, spec in pod_specs(docs):
        for c in spec["containers"]:
            if "image" in c:
                yield where, c["image"]
    flink = find(docs, "FlinkDeployment", "usersignals-indexer")["spec"]
    yield "usersignals-indexer", flink["image"]
    for c in flink["taskManager"]["podTemplate"]["spec"]["containers"]:
        if "image" in c:
            yield f"usersignals-indexer taskmanager {c['name']}", c["image"]
    yield "batch", find(docs, "ConfigMap", "usersignals-spark-submit")["data"]["SPARK_KUBERNETES_CONTAINER_IMAGE"]


THIRD_PARTY_IMAGES = {"redis", "oliver006/redis_exporter"}


def test_the_projects_images_carry_the_targets_tag(rendered):
    target, docs, _, tag = rendered
    # Third-party images: each at a fixed release (redis, redis_exporter), never a moving tag.
    theirs = {where: image for where, image in images(docs) if image.split(":")[0] in THIRD_PARTY_IMAGES}
    for where, image in theirs.items():
        assert re.fullmatch(r"v?\d+(\.\d+)+", image.rsplit(":", 1)[1]), (target, where, image)
    ours = {where: image for where, image in images(docs) if where not in theirs}
    names = {image.rsplit(":", 1)[0].rsplit("/", 1)[1] for image in ours.values()}
    assert names == {"main", "streaming", "batch"}, (target, ours)
    for where, image in ours.items():
        assert image.endswith(f":{tag}"), (target, where, image, tag)
    if target != "base":
        assert "ghcr.io/usersignals" not in yaml.safe_dump_all(docs), (target, "an image the overlay did not retag")


def test_spark_submit_finds_its_conf_and_the_driver_its_settings(rendered):
    """spark-defaults.conf holds no cluster address (the driver reads them from the settings) and
    names the pod template where Airflow's pods mount the ConfigMap."""
    target, docs, _, _ = rendered
    conf = spark_defaults(docs)
    text = find(docs, "ConfigMap", "usersignals-spark-defaults")["data"]["spark-defaults.conf"]
    assert "s3://" not in text and text.count(".svc") == text.count("kubernetes.default.svc"), target
    for role in ("driver", "executor"):
        assert conf[f"spark.kubernetes.{role}.podTemplateFile"] == f"{SPARK_CONF_DIR}/spark-pod-template.yaml"
    # The driver opens the catalog; executors get the table's files from it, not the password.
    assert conf["spark.kubernetes.driver.secretKeyRef.USERSIGNALS_LAKE_CATALOG_URI"] == \
        "usersignals-lake-catalog:USERSIGNALS_LAKE_CATALOG_URI"
    assert not any(key.startswith("spark.kubernetes.executor.secretKeyRef.") for key in conf), target
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    volume = next(v["name"] for v in values["volumes"]
                  if v.get("configMap", {}).get("name") == "usersignals-spark-defaults")
    assert {"name": volume, "mountPath": SPARK_CONF_DIR, "readOnly": True} in values["volumeMounts"]
    assert {"name": "SPARK_CONF_DIR", "value": SPARK_CONF_DIR} in values["env"]
    assert "usersignals-spark-submit" in values["extraEnvFrom"] and "SPARK_KUBERNETES_NAMESPACE" in values["extraEnv"]


def test_an_overlay_address_outside_its_namespace_fails_the_check(tmp_path):
    """A peer left in the base's namespace by an overlay is caught, not rendered silently."""
    docs = render("overlays/example")
    settings = find(docs, "ConfigMap", "usersignals-settings")
    settings["data"]["USERSIGNALS_TRINO_HOST"] = "trino.usersignals.svc"
    with pytest.raises(AssertionError, match="trino.usersignals.svc"):
        test_every_pods_settings_load_and_its_peers_are_services_of_the_namespace(
            ("overlays/example", docs, EXAMPLE["namespace"], "1.4.2"))


def test_the_api_serves_its_admin_routes_on_a_port_nothing_exposes(rendered):
    """Tenant changes, reload and erasure answer only on the admin port; no Service targets it and
    no NetworkPolicy lets traffic in on it (an admin port-forwards, kubernetes.md step 5)."""
    _, docs, namespace, _ = rendered
    pod = find(docs, "Deployment", "serving")["spec"]["template"]["spec"]
    api = next(c for c in pod["containers"] if c["name"] == "api")
    settings = container_settings(docs, "serving", api, namespace)
    assert settings.api_admin_port and settings.api_admin_port != settings.api_port
    admin = settings.api_admin_port
    assert {p["containerPort"] for p in api["ports"]} == {settings.api_port, admin}
    names = {p["name"]: p["containerPort"] for p in api["ports"]}
    for d in docs:
        if d["kind"] == "Service":
            targets = {p.get("targetPort", p["port"]) for p in d["spec"].get("ports", [])}
            assert not targets & {admin, next((n for n, port in names.items() if port == admin), None)}, \
                d["metadata"]["name"]
        if d["kind"] == "NetworkPolicy":
            for rule in d["spec"].get("ingress", []):
                assert admin not in {p.get("port") for p in rule.get("ports", [])}, d["metadata"]["name"]
