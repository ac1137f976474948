"""What every usersignals DAG shares: how a Spark job task is built, default args, assets.

DAG files stay thin: the logic is in ``batch`` (run through ``spark-submit batch/submit.py``),
the settings and registry in ``usersignals``. Tasks run Spark through the
``spark_default`` connection (locally ``local[2]``; a cluster's master in production).
"""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from airflow.sdk import Asset

from usersignals import lake
from usersignals.registry import load_registry
from usersignals.settings import REPO_ROOT, load_settings

SETTINGS = load_settings()
REGISTRY = load_registry(SETTINGS.registry_path)

# The moment a run computes "as of", for the batch CLI's --as-of: the end of the run's data
# interval (scheduled runs and backfills); a run without one (asset-triggered, or triggered
# without a logical date) has no interval, so the moment it was due (run_after). Never the
# wall clock: a re-run or a backfill of a past run computes what that run did.
AS_OF_MOMENT = "(data_interval_end if data_interval_end is defined and data_interval_end else dag_run.run_after)"
AS_OF = "{{ %s | ts }}" % AS_OF_MOMENT
# The day before that moment's UTC day: the last complete day (retraining's holdout day).
DAY_BEFORE_AS_OF = "{{ macros.ds_add(%s | ds, -1) }}" % AS_OF_MOMENT


def table_asset(table: str) -> Asset:
    """The Asset of an Iceberg table: what one DAG produces and another is scheduled on."""
    return Asset(f"iceberg://{SETTINGS.lake_catalog}/{SETTINGS.lake_namespace}/{table}", group="lake")


ENRICHED_EVENTS = table_asset(lake.ENRICHED_EVENTS)
# One per event type, updated by that type's daily re-enrichment: "the day is complete" for it.
ENRICHED_BY_TYPE = {t: table_asset(f"{lake.ENRICHED_EVENTS}/event_type={t}") for t in REGISTRY.event_types}
ITEM_EMBEDDINGS = table_asset(lake.ITEM_EMBEDDINGS)
MODEL_RUNS = table_asset(lake.MODEL_RUNS)
# The KV layer's assets are named by the node settings.kv_url names (no credentials), not the bind host.
_KV = urlsplit(SETTINGS.kv_url)
KV_ROOT = f"redis://{_KV.hostname}:{_KV.port or 6379}/{SETTINGS.kv_prefix}"
KV_EMBEDDINGS = Asset(f"{KV_ROOT}/model/embeddings", group="kv")
KV_ITEM_FEATURES = Asset(f"{KV_ROOT}/item_features", group="kv")

DEFAULT_ARGS = {
    "owner": "usersignals",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "execution_timeout": dt.timedelta(hours=2),
}
START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def usersignals_dag(dag_id: str, description: str, schedule, tags: list[str], doc_md: str, timeout_h: float,
                    params: dict | None = None, repairs_days: bool = False, **kwargs):
    """A DAG with the platform's defaults: one run at a time, a run timeout, retries
    (``DEFAULT_ARGS``, overridable with ``default_args``), tagged ``usersignals``.

    ``repairs_days``: each run repairs its data interval's day, so the scheduler catches up: a day
    whose run never happened (scheduler down, DAG paused) gets its run when it is back, oldest
    first, one at a time (``max_active_runs`` 1). Other DAGs do not catch up: a missed weekly
    retraining or nightly maintenance is done by the next run."""
    from airflow.sdk import DAG

    return DAG(dag_id=dag_id, description=description, schedule=schedule, start_date=START, catchup=repairs_days,
               max_active_runs=kwargs.pop("max_active_runs", 1), dagrun_timeout=dt.timedelta(hours=timeout_h),
               default_args={**DEFAULT_ARGS, **kwargs.pop("default_args", {})}, tags=["usersignals", *tags],
               doc_md=doc_md, params=params or {}, **kwargs)


def within_catchup(run_type: str, data_interval_end: dt.datetime, now: dt.datetime, days: int) -> bool:
    """Whether a repair DAG's run does its work: a scheduled run whose day ended more than ``days``
    before ``now`` is a catch-up too old to be automatic (a DAG unpaused for the first time would
    replay every day since its start date); runs someone asked for (manual, backfill) always work."""
    if run_type != "scheduled":
        return True
    return data_interval_end >= now - dt.timedelta(days=days)


def _catchup_check(days: int, dag_run=None, data_interval_end=None, **_) -> bool:
    now = dt.datetime.now(dt.timezone.utc)
    run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
    ok = within_catchup(run_type, data_interval_end or now, now, days)
    if not ok:
        print(f"day ending {data_interval_end} is more than {days} days old (USERSIGNALS_CATCHUP_DAYS): "
              "skipped; backfill it from the UI to repair it")
    return ok


def catchup_window(days: int | None = None):
    """The first task of a per-day repair DAG: skips the run's other tasks when it is a scheduled
    catch-up older than ``settings.catchup_days`` (``within_catchup``)."""
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    return ShortCircuitOperator(task_id="within_catchup_window", python_callable=_catchup_check,
                                op_kwargs={"days": SETTINGS.catchup_days if days is None else days})


def submit_spec(settings, environ: Mapping[str, str]) -> dict:
    """What ``spark_job`` hands SparkSubmitOperator for ``python -m batch`` on ``settings.spark_master``.

    Locally (``local[...]``, client mode): the repo's batch/submit.py, the catalog's jars from
    build/jars, and the whole settings environment for spark-submit's process. On Kubernetes
    (``k8s://``, cluster mode, infra/k8s/spark-defaults.conf): paths inside the batch image
    (``local://``), its jars on the classpath (extraClassPath), the namespace and image of the
    Airflow pod's environment, and no env_vars: the hook would put them on the command line as
    spark.kubernetes.driverEnv.*, catalog password and admin key included; the driver reads the
    settings ConfigMap and the catalog's Secret itself (spark-pod-template.yaml)."""
    master = settings.spark_master
    if master.startswith("k8s://"):
        root = "/opt/usersignals"   # the repo root in every image (infra/images/*.Dockerfile)
        missing = [v for v in ("SPARK_KUBERNETES_NAMESPACE", "SPARK_KUBERNETES_CONTAINER_IMAGE") if not environ.get(v)]
        if missing:
            raise ValueError(f"spark master {master} needs {missing} in the Airflow pod's environment "
                             "(infra/k8s/airflow-values.yaml sets them)")
        return {"application": f"local://{root}/batch/submit.py", "jars": None, "env_vars": None,
                "conf": {"spark.kubernetes.namespace": environ["SPARK_KUBERNETES_NAMESPACE"],
                         "spark.kubernetes.container.image": environ["SPARK_KUBERNETES_CONTAINER_IMAGE"]}}
    conf = lake.spark_conf(settings)
    jars = conf.pop("spark.jars")
    # spark-submit and the job's Python come from the environment that has Spark and the batch
    # jobs' libraries (the main one locally), not from Airflow's.
    python = settings.batch_python
    env = {**settings.to_env(), "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python,
           "PATH": os.pathsep.join([os.path.dirname(python), environ.get("PATH", "")]),
           "PYTHONPATH": str(REPO_ROOT)}
    return {"application": str(REPO_ROOT / "batch" / "submit.py"), "jars": jars, "env_vars": env,
            "conf": {**conf, "spark.local.dir": str(settings.data_dir / "spark-tmp")}}


def spark_job(task_id: str, args: list[str], operator=None, **kwargs):
    """A task running ``python -m batch <args>`` on Spark with the lake's catalog mounted;
    ``operator``: a SparkSubmitOperator subclass (e.g. one that returns the job's figures)."""
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    spec = submit_spec(SETTINGS, os.environ)
    return (operator or SparkSubmitOperator)(
        task_id=task_id,
        application_args=args,
        name=f"usersignals-{task_id}",
        driver_memory="2g",
        **spec,
        **kwargs,
    )
