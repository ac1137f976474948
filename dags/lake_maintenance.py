"""Nightly table maintenance: drop expired partitions, compact, rewrite manifests, expire snapshots.

Each table's retention (days, ``retention_days`` in ``iceberg_schemas/tables.py``) is dropped by a
predicate on its day partition: whole files go. The indexing job commits the lake on every
checkpoint (seconds apart), so tables collect small files; compaction merges them, and rewrites
the files that have row-level deletes (a user's erasure, from ``user_erasure`` an hour earlier)
without the deleted rows. Snapshots younger than ``expire_days`` (and the newest 50) are kept,
which also keeps the job's last committed checkpoint id (in its snapshots' summaries), which
Iceberg's Flink sink looks up when the job restores; expiring the older ones deletes the files
only they needed (dropped partitions, rows erased before compaction).

The task returns (XCom ``return_value``) what it dropped per table: ``{table: {"rows", "files"}}``;
the job's log and its textfile metric (``usersignals_batch_rows{job="maintenance"}``) say the same.
"""
from __future__ import annotations

import re

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Param

from _usersignals import AS_OF, SETTINGS, spark_job, usersignals_dag

_DROPPED = re.compile(r'^usersignals_batch_rows\{job="maintenance",stage="([^"]+)\.expired_(rows|files)"\} (\S+)$')


def dropped(prom_text: str) -> dict[str, dict[str, int]]:
    """``{table: {"rows": n, "files": n}}`` from the maintenance job's textfile metric."""
    out: dict[str, dict[str, int]] = {}
    for line in prom_text.splitlines():
        m = _DROPPED.match(line)
        if m:
            out.setdefault(m[1], {})[m[2]] = int(float(m[3]))
    return out


class MaintenanceSubmit(SparkSubmitOperator):
    """spark-submit of the maintenance job, returning what it dropped: the figures its driver (on
    this worker: client mode) wrote to the textfile metric, which each run rewrites whole."""

    def execute(self, context):
        super().execute(context)
        return dropped((SETTINGS.data_dir / "metrics" / "batch_maintenance.prom").read_text())


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
