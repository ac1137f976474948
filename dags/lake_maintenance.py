"""Nightly table maintenance: compact small files, rewrite manifests, expire snapshots.

The indexing job commits the lake on every checkpoint (seconds apart), so tables collect small
files; this keeps scans fast and storage bounded. Snapshots younger than ``expire_days`` (and the
newest 50) are kept, which also keeps the job's last committed checkpoint id (in its snapshots'
summaries), which Iceberg's Flink sink looks up when the job restores.
"""
from __future__ import annotations

from airflow.sdk import Param

from _usersignals import spark_job, usersignals_dag

with usersignals_dag(
    dag_id="lake_maintenance",
    description="Compact, rewrite manifests and expire snapshots of the lake's tables",
    schedule="30 3 * * *",
    tags=["maintenance"],
    doc_md=__doc__,
    timeout_h=3,
    params={"expire_days": Param(5, type="integer", minimum=1, maximum=90,
                                 description="Expire snapshots older than this many days")},
) as dag:
    spark_job("maintain", ["maintenance", "--expire-days", "{{ params.expire_days }}"])
