"""Online/offline parity: rebuild a sample of users' sequences from the lake and compare
them with the KV layer. Fails (and alerts) when the mismatch rate exceeds the threshold.

Scheduled on the enriched-events asset: it runs after each daily re-enrichment or backfill, and
compares as of the moment the run was due (an asset-triggered run has no data interval) minus the
watermark, not as of whenever the task happens to start.
"""
from __future__ import annotations

from airflow.sdk import Param

from _usersignals import AS_OF, ENRICHED_EVENTS, spark_job, usersignals_dag

with usersignals_dag(
    dag_id="parity_check",
    description="Compare sampled users' KV sequences with sequences rebuilt from the lake",
    schedule=[ENRICHED_EVENTS],
    tags=["quality"],
    doc_md=__doc__,
    timeout_h=1,
    default_args={"retries": 0},  # a mismatch is a finding, not a transient error
    params={
        "sample": Param(500, type="integer", minimum=1, maximum=100000, description="Users to compare"),
        "threshold": Param(0.01, type="number", minimum=0, maximum=1, description="Fail above this mismatch rate"),
        "watermark_minutes": Param(10, type="integer", minimum=0,
                                   description="Compare as of this many minutes before the run's as-of moment "
                                               "(lets the lake catch up)"),
    },
) as dag:
    spark_job("parity", ["parity", "--as-of", AS_OF, "--sample", "{{ params.sample }}",
                         "--threshold", "{{ params.threshold }}",
                         "--watermark-minutes", "{{ params.watermark_minutes }}"])
