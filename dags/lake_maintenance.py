"""Nightly table maintenance: compact small files, rewrite manifests, expire snapshots.

The lake sink commits every few seconds, so tables collect small files; this keeps scans
fast and storage bounded. Snapshots younger than ``expire_days`` (and the newest 50)
are kept, which also keeps the sink's resume positions.
"""
from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param

from _usersignals import DEFAULT_ARGS, START, spark_job

with DAG(
    dag_id="lake_maintenance",
    description="Compact, rewrite manifests and expire snapshots of the lake's tables",
    schedule="30 3 * * *",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=3),
    default_args=DEFAULT_ARGS,
    tags=["usersignals", "maintenance"],
    doc_md=__doc__,
    params={"expire_days": Param(5, type="integer", minimum=1, maximum=90,
                                 description="Expire snapshots older than this many days")},
) as dag:
    spark_job("maintain", ["maintenance", "--expire-days", "{{ params.expire_days }}"])
