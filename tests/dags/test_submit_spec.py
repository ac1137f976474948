"""spark_job's spark-submit arguments: the local stack's, or Kubernetes' cluster mode with paths in
the batch image and no secret on the command line (the hook turns env_vars into --conf flags)."""
import sys

import pytest

from usersignals.settings import REPO_ROOT, load_settings

sys.path.insert(0, str(REPO_ROOT / "dags"))   # as Airflow does, for dags/_usersignals.py
from _usersignals import submit_spec  # noqa: E402

PASSWORD = "s3cr3t-catalog-pw"
ADMIN_KEY = "admin-key-from-the-secret"
POD_ENV = {"SPARK_KUBERNETES_NAMESPACE": "us-prod",
           "SPARK_KUBERNETES_CONTAINER_IMAGE": "registry.example.com/usersignals/batch:1.4.2", "PATH": "/usr/bin"}


def settings(master: str):
    return load_settings({
        "USERSIGNALS_SPARK_MASTER": master, "USERSIGNALS_ADMIN_KEY": ADMIN_KEY,
        "USERSIGNALS_LAKE_CATALOG_TYPE": "sql",
        "USERSIGNALS_LAKE_CATALOG_URI": f"postgresql+psycopg2://lake:{PASSWORD}@lake-catalog-db.us-prod.svc:5432/iceberg",
        "USERSIGNALS_LAKE_WAREHOUSE": "s3://acme-lake/warehouse"})


def test_a_local_master_runs_the_repo_with_its_jars_and_the_settings():
    spec = submit_spec(settings("local[2]"), POD_ENV)
    assert spec["application"] == str(REPO_ROOT / "batch" / "submit.py")
    assert spec["jars"] and all(j.endswith(".jar") for j in spec["jars"].split(","))
    assert spec["env_vars"]["USERSIGNALS_LAKE_CATALOG_URI"].endswith("@lake-catalog-db.us-prod.svc:5432/iceberg")
    assert spec["env_vars"]["PATH"].endswith("/usr/bin")
    assert spec["conf"]["spark.sql.catalog.lake.jdbc.password"] == PASSWORD
    assert "spark.jars" not in spec["conf"]


def test_a_kubernetes_master_runs_the_batch_image_and_passes_no_secret():
    spec = submit_spec(settings("k8s://https://kubernetes.default.svc"), POD_ENV)
    assert spec["application"] == "local:///opt/usersignals/batch/submit.py"
    assert spec["jars"] is None   # the image's build/jars/spark, on spark-defaults' extraClassPath
    assert spec["env_vars"] is None   # the hook would turn them into spark.kubernetes.driverEnv.* flags
    assert spec["conf"] == {"spark.kubernetes.namespace": "us-prod",
                            "spark.kubernetes.container.image": "registry.example.com/usersignals/batch:1.4.2"}
    flat = repr(spec)
    assert PASSWORD not in flat and ADMIN_KEY not in flat


def test_a_kubernetes_master_without_the_pods_namespace_and_image_names_them():
    with pytest.raises(ValueError, match="SPARK_KUBERNETES_CONTAINER_IMAGE"):
        submit_spec(settings("k8s://https://kubernetes.default.svc"), {"SPARK_KUBERNETES_NAMESPACE": "us-prod"})
