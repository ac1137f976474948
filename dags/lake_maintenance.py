"""Nightly table maintenance: drop expired partitions, compact, rewrite manifests, expire snapshots.

Each table's retention (days, ``retention_days`` in ``iceberg_schemas/tables.py``) is dropped by a
predicate on its day partition: whole files go. The indexing job commits the lake on every
checkpoint (seconds apart), so tables collect small files; compaction merges them, and rewrites
the files that have row-level deletes (a user's erasure, from ``user_erasure`` an hour earlier)
without the deleted rows. Snapshots younger than ``expire_days`` (and the newest 50) are kept,
which also keeps the job's last committed checkpoint id (in its snapshots' summaries), which
Iceberg's Flink sink looks up when the job restores; expiring the older ones deletes the files
only they needed (dropped partitions, rows erased before compaction).

The task returns (XCom ``return_value``) what it dropped per table: ``{table: {"rows", "files"}}``,
read back from the lake once the job has finished: the job records each table's figures in that
table's properties (``batch.jobs.record_dropped``), which the task reads through the catalog,
wherever the driver ran (locally on this worker; on Kubernetes in a pod of its own). The job's log
and its textfile metric (``usersignals_batch_rows{job="maintenance"}``) say the same.
"""
from __future__ import annotations

import json
import os
import subprocess

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Param

from _usersignals import AS_OF, SETTINGS, spark_job, usersignals_dag
from usersignals.settings import REPO_ROOT


def figures_command(application_args: list[str], python: str) -> list[str]:
    """``python -m batch maintenance-figures`` for the run the (rendered) job arguments describe:
    its ``--as-of`` and, if it named some, its ``--tables``."""
    def value(option: str) -> str | None:
        return application_args[application_args.index(option) + 1] if option in application_args else None

    as_of = value("--as-of")
    if as_of is None:
        raise ValueError(f"the maintenance job's arguments {application_args} have no --as-of")
    tables = value("--tables")
    return [python, "-m", "batch", "maintenance-figures", "--as-of", as_of] + (["--tables", tables] if tables else [])


class MaintenanceSubmit(SparkSubmitOperator):
    """spark-submit of the maintenance job, returning what it dropped per table, as the job
    recorded it in the lake (pyiceberg in the batch jobs' Python: Airflow's has no Iceberg
    client). Not the driver's metric file: in cluster mode it is on another machine."""

    def execute(self, context):
        super().execute(context)
        env = {**os.environ, **SETTINGS.to_env(), "PYTHONPATH": str(REPO_ROOT)}
        proc = subprocess.run(figures_command(list(self.application_args), SETTINGS.batch_python), env=env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"reading the maintenance run's figures from the lake failed "
                               f"(exit {proc.returncode}): {proc.stderr[-3000:]}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        figures.pop("job")
        return figures


with usersignals_dag(
    dag_id="lake_maintenance",
    description="Drop expired partitions, compact, rewrite manifests and expire snapshots of the lake's tables",
    schedule="30 3 * * *",
    tags=["maintenance"],
    doc_md=__doc__,
    timeout_h=3,
    params={"expire_days": Param(5, type="integer", minimum=1, maximum=90,
                                 description="Expire snapshots older than this many days")},
) as dag:
    # Retention counts back from the run's moment (its data interval's end), not the wall clock.
    maintain = spark_job("maintain", ["maintenance", "--as-of", AS_OF, "--expire-days", "{{ params.expire_days }}"],
                         operator=MaintenanceSubmit)
