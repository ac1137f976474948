"""Online/offline parity: rebuild a sample of users' sequences from the lake and compare
them with the KV layer. Fails (and alerts) when the mismatch rate exceeds the threshold.

Scheduled on the enriched-events asset: it runs after each daily re-enrichment or backfill.
"""
from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param

from _usersignals import DEFAULT_ARGS, ENRICHED_EVENTS, START, spark_job

with DAG(
    dag_id="parity_check",
    description="Compare sampled users' KV sequences with sequences rebuilt from the lake",
    schedule=[ENRICHED_EVENTS],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=1),
    default_args={**DEFAULT_ARGS, "retries": 0},  # a mismatch is a finding, not a transient error
    tags=["usersignals", "quality"],
    doc_md=__doc__,
    params={
        "sample": Param(500, type="integer", minimum=1, maximum=100000, description="Users to compare"),
        "threshold": Param(0.01, type="number", minimum=0, maximum=1, description="Fail above this mismatch rate"),
        "watermark_minutes": Param(10, type="integer", minimum=0,
                                   description="Compare as of this many minutes ago (lets the lake catch up)"),
    },
) as dag:
    spark_job("parity", ["parity", "--sample", "{{ params.sample }}", "--threshold", "{{ params.threshold }}",
                         "--watermark-minutes", "{{ params.watermark_minutes }}"])
