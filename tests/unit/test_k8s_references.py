"""The rendered manifests stand on their own: every ServiceAccount, Secret, ConfigMap and PVC they
(and the Helm values) name is defined by them or listed as the admin's in docs/operations/kubernetes.md;
every pod runs restricted; the stateful parts survive a node's loss and the next release's apply."""
import re

import pytest
import yaml

from tests.unit.test_k8s_render import K8S, TARGETS, find, pod_specs, provided, render, spark_defaults

AIRFLOW_VALUES = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
TRINO_VALUES = yaml.safe_load((K8S / "trino-values.yaml").read_text())
# Made by the operators from our resources, or by the charts from their values.
MADE_BY_OTHERS = {("ConfigMap", "kafka-metrics"): "base/kustomization.yaml configMapGenerator"}


@pytest.fixture(scope="module", params=list(TARGETS))
def rendered(request):
    return request.param, render(request.param)


def references(node, found=None) -> set[tuple[str, str]]:
    """(kind, name) of every Secret, ConfigMap, ServiceAccount and PVC a manifest's tree refers to."""
    found = set() if found is None else found
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretRef", "secretKeyRef") and isinstance(value, dict):
                found.add(("Secret", value["name"]))
            elif key in ("configMapRef", "configMapKeyRef") and isinstance(value, dict):
                found.add(("ConfigMap", value["name"]))
            elif key == "configMap" and isinstance(value, dict) and "name" in value:
                found.add(("ConfigMap", value["name"]))
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                found.add(("Secret", value["secretName"]))
            elif key == "persistentVolumeClaim" and isinstance(value, dict):
                found.add(("PersistentVolumeClaim", value["claimName"]))
            elif key in ("serviceAccountName", "serviceAccount") and isinstance(value, str):
                found.add(("ServiceAccount", value))
            references(value, found)
    elif isinstance(node, list):
        for item in node:
            references(item, found)
    return found


def referenced(docs) -> dict[tuple[str, str], str]:
    """Every reference of the rendered manifests, Spark's configuration and the Helm values -> where."""
    where: dict[tuple[str, str], str] = {}
    for d in docs:
        for ref in references(d.get("spec", {})):
            where.setdefault(ref, f"{d['kind']}/{d['metadata']['name']}")
        for subject in d.get("subjects", []):
            if subject["kind"] == "ServiceAccount":
                where.setdefault(("ServiceAccount", subject["name"]), f"{d['kind']}/{d['metadata']['name']}")
    spark = find(docs, "ConfigMap", "usersignals-spark-defaults")["data"]
    for ref in references(yaml.safe_load(spark["spark-pod-template.yaml"])):
        where.setdefault(ref, "spark-pod-template.yaml")
    for key, value in spark_defaults(docs).items():
        if key.startswith("spark.kubernetes.authenticate.") and key.endswith(".serviceAccountName"):
            where.setdefault(("ServiceAccount", value.strip()), f"spark-defaults.conf {key}")
        elif ".secretKeyRef." in key:
            where.setdefault(("Secret", value.split(":")[0]), f"spark-defaults.conf {key}")
    airflow = {**AIRFLOW_VALUES, "extraEnvFrom": yaml.safe_load(AIRFLOW_VALUES["extraEnvFrom"]),
               "extraEnv": yaml.safe_load(AIRFLOW_VALUES["extraEnv"])}
    for ref in references(airflow):
        where.setdefault(ref, "airflow-values.yaml")
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        where.setdefault(("Secret", AIRFLOW_VALUES[key]), f"airflow-values.yaml {key}")
    where.setdefault(("Secret", AIRFLOW_VALUES["data"]["metadataSecretName"]), "airflow-values.yaml data.metadataSecretName")
    if not AIRFLOW_VALUES["workers"]["serviceAccount"].get("create", True):
        where.setdefault(("ServiceAccount", AIRFLOW_VALUES["workers"]["serviceAccount"]["name"]), "airflow-values.yaml workers")
    for ref in references({"envFrom": TRINO_VALUES["envFrom"]}):
        where.setdefault(ref, "trino-values.yaml")
    return where


def defined(docs) -> set[tuple[str, str]]:
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for d in docs:   # a StatefulSet's claims: <template>-<set>-<ordinal>, referenced by the template's name
        for claim in d.get("spec", {}).get("volumeClaimTemplates", []):
            names.add(("PersistentVolumeClaim", claim["metadata"]["name"]))
    return names


def undefined(docs, admin) -> dict[tuple[str, str], str]:
    ours = defined(docs) | set(admin) | set(MADE_BY_OTHERS)
    return {ref: where for ref, where in referenced(docs).items() if ref not in ours}


def test_every_reference_is_defined_or_provided_by_the_admin(rendered):
    target, docs = rendered
    missing = undefined(docs, provided())
    assert not missing, (target, "define them, or list them in docs/operations/kubernetes.md step 1:", missing)


def test_the_admins_list_names_only_what_the_manifests_use(rendered):
    """A stale row in the doc's table would have an admin create what nothing reads."""
    target, docs = rendered
    unused = set(provided()) - set(referenced(docs))
    assert not unused, (target, unused)


def test_a_reference_to_nothing_fails_the_check():
    """What the manifests once were: the spark and flink ServiceAccounts used, defined nowhere."""
    docs = [d for d in render("base") if not (d["kind"] == "ServiceAccount" and d["metadata"]["name"] in ("spark", "flink"))]
    assert set(undefined(docs, provided())) == {("ServiceAccount", "spark"), ("ServiceAccount", "flink")}
    table = "## 1. What the admin provides\n\n| kind | name | keys | what |\n| --- | --- | --- | --- |\n" \
            "| Secret | `usersignals-admin` | `key` | the admin key |\n"
    assert provided(table) == {("Secret", "usersignals-admin"): {"key"}}
    assert ("Secret", "usersignals-lake-catalog") in undefined(render("base"), provided(table))


# --- pods ------------------------------------------------------------------------------------------
# Their entrypoints write under their image's home (/opt/flink, /opt/spark): a writable root.
WRITABLE_ROOT = {"usersignals-indexer", "spark-pod-template.yaml"}


def all_pod_specs(docs):
    yield from pod_specs(docs)
    flink = find(docs, "FlinkDeployment", "usersignals-indexer")["spec"]
    for role in ("jobManager", "taskManager"):
        template = flink[role].get("podTemplate", {}).get("spec", {})
        # The operator merges a role's template into the shared one: the pod's securityContext is the shared one's.
        yield "usersignals-indexer", {**template, "securityContext": flink["podTemplate"]["spec"]["securityContext"],
                                      "containers": [c for c in template.get("containers", [])
                                                     if c["name"] != "flink-main-container"]}
    for pool in (d for d in docs if d["kind"] == "KafkaNodePool"):
        t = pool["spec"]["template"]
        yield pool["metadata"]["name"], {"securityContext": t["pod"]["securityContext"],
                                         "containers": [{"name": "kafka", **t["kafkaContainer"]}]}


def restriction_problems(where: str, spec: dict) -> list[str]:
    problems = []
    pod = spec.get("securityContext", {})
    if pod.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}/{c['name']}: allowPrivilegeEscalation is not false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}/{c['name']}: capabilities.drop is not [ALL]")
        if where not in WRITABLE_ROOT and sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}/{c['name']}: readOnlyRootFilesystem is not true")
    return problems


def test_every_pod_runs_restricted(rendered):
    target, docs = rendered
    problems = [p for where, spec in all_pod_specs(docs) for p in restriction_problems(where, spec)]
    assert not problems, (target, problems)
    for values in (AIRFLOW_VALUES["securityContexts"], {"pod": TRINO_VALUES["securityContext"],
                                                        "containers": TRINO_VALUES["containerSecurityContext"]}):
        assert values["pod"]["runAsNonRoot"] is True and values["pod"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert values["containers"]["allowPrivilegeEscalation"] is False
        assert values["containers"]["capabilities"] == {"drop": ["ALL"]}


def test_a_root_pod_fails_the_restriction_check():
    """The Redis StatefulSet as it was: no securityContext at all."""
    redis = {"containers": [{"name": "redis", "image": "redis:7.4"}]}
    assert len(restriction_problems("redis-cluster", redis)) == 5


def test_read_only_pods_have_their_writable_directories(rendered):
    """A read-only root with data_dir (<repo>/var) and /tmp as emptyDirs, where our images write."""
    target, docs = rendered
    for where, spec in pod_specs(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            if c.get("image", "").rsplit("/", 1)[-1].startswith("main:"):
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                for path in ("/opt/usersignals/var", "/tmp"):
                    assert path in mounts and "emptyDir" in volumes[mounts[path]], (target, where, path)


# --- network ---------------------------------------------------------------------------------------
def policies(docs):
    return {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}


def test_ingress_is_denied_but_to_the_api(rendered):
    target, docs = rendered
    np = policies(docs)
    assert np["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}, target
    open_to_all = {name for name, spec in np.items()
                   for rule in spec.get("ingress", []) if "from" not in rule}
    assert open_to_all == {"serving"}, (target, open_to_all)
    assert np["serving"]["ingress"] == [{"ports": [{"port": 8000}]}]
    kafka = find(docs, "Kafka", "usersignals")["spec"]["kafka"]["listeners"]
    assert all(lst.get("networkPolicyPeers") for lst in kafka), (target, "a Kafka listener open to every pod")


def selected(spec: dict, labels: dict) -> bool:
    sel = spec["podSelector"]
    if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    for e in sel.get("matchExpressions", []):
        if e["operator"] == "Exists" and e["key"] not in labels:
            return False
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
    return True


def test_each_engine_is_reached_by_its_clients(rendered):
    """The KV nodes admit the pods that read the KV layer; Kafka's listener the pods that use it."""
    target, docs = rendered
    np = policies(docs)
    redis = np["redis-cluster"]
    kv_peers = [p["podSelector"]["matchLabels"] for rule in redis["ingress"] for p in rule["from"] if "podSelector" in p]
    templates = {d["metadata"]["name"]: d["spec"]["template"].get("metadata", {}).get("labels", {})
                 for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")}
    templates["usersignals-indexer"] = find(docs, "FlinkDeployment", "usersignals-indexer")["spec"]["podTemplate"]["metadata"]["labels"]
    templates["spark-pod-template.yaml"] = yaml.safe_load(
        find(docs, "ConfigMap", "usersignals-spark-defaults")["data"]["spark-pod-template.yaml"])["metadata"]["labels"]
    for client in ("serving", "trimmer", "usersignals-indexer", "spark-pod-template.yaml", "redis-cluster-create"):
        assert any(all(templates[client].get(k) == v for k, v in peer.items()) for peer in kv_peers), (target, client)
    listener = find(docs, "Kafka", "usersignals")["spec"]["kafka"]["listeners"][0]
    for client in ("serving", "usersignals-indexer"):
        assert any(all(templates[client].get(k) == v for k, v in p["podSelector"]["matchLabels"].items())
                   for p in listener["networkPolicyPeers"]), (target, client)
    assert not selected(redis, templates["serving"]) and selected(redis, templates["redis-cluster"])


# --- availability ----------------------------------------------------------------------------------
def test_the_stateful_parts_and_the_api_survive_a_node(rendered):
    target, docs = rendered
    pdbs = {d["spec"]["selector"]["matchLabels"]["app"]: d["spec"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert pdbs == {"serving": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "serving"}}},
                    "redis-cluster": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "redis-cluster"}}}}, target
    for name in ("serving", "redis-cluster"):
        d = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name)
        term = d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"], (target, name)
    kafka = find(docs, "Kafka", "usersignals")["spec"]["kafka"]["template"]
    assert kafka["podDisruptionBudget"] == {"maxUnavailable": 1}
    pool = find(docs, "KafkaNodePool", "dual-role")["spec"]
    required = pool["template"]["pod"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required[0]["topologyKey"] == "kubernetes.io/hostname" and pool["replicas"] == 3


def test_the_hpa_alone_sets_the_apis_replicas(rendered):
    target, docs = rendered
    hpa = find(docs, "HorizontalPodAutoscaler", "serving")["spec"]
    api = find(docs, "Deployment", hpa["scaleTargetRef"]["name"])
    assert "replicas" not in api["spec"], (target, "a fixed count resets the HPA's on every apply")
    assert hpa["minReplicas"] >= 2


def test_the_job_manager_recovers_from_the_object_store(rendered):
    target, docs = rendered
    conf = find(docs, "FlinkDeployment", "usersignals-indexer")["spec"]["flinkConfiguration"]
    assert conf["high-availability.type"] == "kubernetes"
    ha, checkpoints = conf["high-availability.storageDir"], conf["execution.checkpointing.dir"]
    assert ha.startswith("s3://") and ha.split("/")[2] == checkpoints.split("/")[2], (target, ha, checkpoints)
    role = find(docs, "Role", "flink")["rules"]
    assert any("configmaps" in r["resources"] and "create" in r["verbs"] for r in role), "HA's leader ConfigMaps"


def test_the_kv_nodes_cap_their_memory_under_the_limit(rendered):
    target, docs = rendered
    redis = find(docs, "StatefulSet", "redis-cluster")["spec"]["template"]["spec"]["containers"]
    node = next(c for c in redis if c["name"] == "redis")
    args = dict(zip(node["args"][::2], node["args"][1::2]))
    maxmemory = int(re.fullmatch(r"(\d+)gb", args["--maxmemory"])[1]) * 2**30
    limit = int(re.fullmatch(r"(\d+)Gi", node["resources"]["limits"]["memory"])[1]) * 2**30
    assert maxmemory <= 0.8 * limit, (target, "room for the AOF rewrite's copy-on-write and buffers")
    assert args["--maxmemory-policy"] == "noeviction"
    assert any(c["name"] == "exporter" and c["ports"][0]["containerPort"] == 9121 for c in redis)


def test_one_shot_jobs_can_be_applied_again(rendered):
    """kubectl apply of a changed Job fails (its template is immutable): finished Jobs go away."""
    target, docs = rendered
    jobs = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Job"}
    assert set(jobs) == {"lake-migrate", "redis-cluster-create"}
    for name, spec in jobs.items():
        assert 0 < spec.get("ttlSecondsAfterFinished", 0) <= 3600, (target, name)
    create = " ".join(jobs["redis-cluster-create"]["template"]["spec"]["containers"][0]["args"])
    assert "cluster_known_nodes:1" in create and "exit 0" in create, "a second run must find the cluster and stop"


def test_the_object_store_is_reached_by_workload_identity(rendered):
    target, docs = rendered
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    for name in ("spark", "flink", "usersignals-lake"):
        arn = accounts[name]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn), (target, name, arn)
    region = find(docs, "ConfigMap", "usersignals-object-store")["data"]["AWS_REGION"]
    assert re.fullmatch(r"[a-z]{2}-[a-z]+-\d", region)
    assert find(docs, "Job", "lake-migrate")["spec"]["template"]["spec"]["serviceAccountName"] == "usersignals-lake"
    spark = spark_defaults(docs)
    assert spark["spark.kubernetes.authenticate.executor.serviceAccountName"].strip() == "spark"


def test_the_kv_nodes_require_the_secrets_password(rendered):
    """requirepass and masterauth from the usersignals-kv Secret; the probe, the exporter and the
    cluster Job authenticate with it (the clients' URL carries it: test_k8s_render.py)."""
    target, docs = rendered
    password = {"secretKeyRef": {"name": "usersignals-kv", "key": "password"}}
    pod = find(docs, "StatefulSet", "redis-cluster")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    node = containers["redis"]
    args = dict(zip(node["args"][::2], node["args"][1::2]))
    env = {e["name"]: e.get("valueFrom") for e in node.get("env", [])}
    assert args["--requirepass"] == args["--masterauth"] == "$(REDIS_PASSWORD)", target
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == password, target
    assert "--protected-mode" not in args
    assert {e["name"]: e["valueFrom"] for e in containers["exporter"]["env"]} == {"REDIS_PASSWORD": password}
    create = find(docs, "Job", "redis-cluster-create")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e["valueFrom"] for e in create["env"]} == {"REDISCLI_AUTH": password}
