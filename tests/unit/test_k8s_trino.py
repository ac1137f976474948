"""Trino in the cluster is the official chart with infra/k8s/trino-values.yaml: the local Trino's
version, the lake catalog of infra/trino/, its environment from what the deployment and the admin
define, and the Service name the settings point at."""
import re

import yaml

from tests.unit.test_k8s_render import K8S, find, provided, render
from usersignals.settings import REPO_ROOT

VALUES = yaml.safe_load((K8S / "trino-values.yaml").read_text())
CATALOG = REPO_ROOT / "infra" / "trino" / "coordinator" / "catalog" / "lake.properties"
CHART_VERSION = "1.39.1"   # trinodb/charts: the release whose appVersion is 476


def test_the_image_is_the_local_trinos_version():
    pinned = re.search(r"<trino\.version>(\d+)</trino\.version>", (REPO_ROOT / "infra" / "pom.xml").read_text())[1]
    assert VALUES["image"] == {"repository": "trinodb/trino", "tag": pinned}
    assert f"--version {CHART_VERSION}" in (K8S / "trino-values.yaml").read_text()


def test_the_catalog_is_infra_trinos_lake_catalog():
    assert VALUES["catalogs"] == {"lake": CATALOG.read_text()}
    props = dict(line.split("=", 1) for line in CATALOG.read_text().splitlines() if line and not line.startswith("#"))
    env = set(re.findall(r"\$\{ENV:(\w+)\}", CATALOG.read_text()))
    assert env == {"USERSIGNALS_TRINO_JDBC_URL", "USERSIGNALS_TRINO_JDBC_USER", "USERSIGNALS_TRINO_JDBC_PASSWORD",
                   "USERSIGNALS_LAKE_WAREHOUSE", "AWS_REGION"}
    assert props["iceberg.security"] == "read_only"


def test_every_variable_the_catalog_reads_comes_from_the_pods_environment():
    """Each ${ENV:X} of the catalog is a key of a ConfigMap the deployment renders or of a Secret the
    admin provides (docs/operations/kubernetes.md), loaded by the chart's envFrom."""
    docs = render("base")
    keys = set()
    for source in VALUES["envFrom"]:
        if "configMapRef" in source:
            keys |= set(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            keys |= provided()[("Secret", source["secretRef"]["name"])]
    needed = set(re.findall(r"\$\{ENV:(\w+)\}", VALUES["catalogs"]["lake"]))
    assert needed <= keys, needed - keys


def test_the_release_name_gives_the_service_the_settings_name():
    """The chart names its Service after the release (`trino` contains the chart's name): the docs
    install release `trino`, which is USERSIGNALS_TRINO_HOST's service, and nothing sets another name."""
    settings = find(render("base"), "ConfigMap", "usersignals-settings")["data"]
    assert settings["USERSIGNALS_TRINO_HOST"].split(".")[0] == "trino"
    assert settings["USERSIGNALS_TRINO_PORT"] == "8080"
    doc = (REPO_ROOT / "docs" / "operations" / "kubernetes.md").read_text()
    assert f"install trino trino/trino --version {CHART_VERSION} -f infra/k8s/trino-values.yaml" in doc
    assert not {"fullnameOverride", "nameOverride"} & set(VALUES)


def test_trino_reads_the_lake_as_its_own_identity():
    sa = VALUES["serviceAccount"]
    assert sa["create"] is True and sa["name"] == "trino"
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", sa["annotations"]["eks.amazonaws.com/role-arn"])
