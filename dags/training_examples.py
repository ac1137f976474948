"""Point-in-time training examples of a day, from the lake and from what was served.

Each run builds the examples of the last complete UTC day (the day before the run's as-of
moment): ``lake`` labels every relevant engagement of that day with the user's newest events of
each dataset strictly before it, enriched with the item features valid then; one ``served_<tenant>``
task per tenant that logs served features reads back what the API served that day and labels
each request with the engagement that followed within the window. Each task overwrites its
(day, source) partition of ``training_examples`` and the day's Parquet export, so a re-run or a
backfill of a day is safe. Runs at 01:30 UTC, which leaves the served path's label window
(default 30 minutes) after midnight closed. A day whose run was missed (scheduler down, DAG
paused) is caught up: the scheduler creates its run when it is back, oldest first.
"""
from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, Param

from _usersignals import DAY_BEFORE_AS_OF, REGISTRY, catchup_window, spark_job, table_asset, usersignals_dag

TRAINING_EXAMPLES = table_asset("training_examples")

with usersignals_dag(
    dag_id="training_examples",
    description="Build a day's point-in-time training examples (lake and served) and their Parquet export",
    schedule=CronTriggerTimetable("30 1 * * *", timezone="UTC"),
    tags=["model", "training-data"],
    doc_md=__doc__,
    timeout_h=3,
    repairs_days=True,
    params={
        "lookback_days": Param(30, type="integer", minimum=1, maximum=400,
                               description="Lake path: oldest event in a sequence, days before its label"),
        "label_window_minutes": Param(30, type="integer", minimum=1, maximum=90,
                                      description="Served path: engagements this long after a request label it"),
    },
) as dag:
    guard = catchup_window()
    guard >> spark_job("lake", ["training-examples", "--day", DAY_BEFORE_AS_OF, "--source", "lake",
                                "--lookback-days", "{{ params.lookback_days }}"], outlets=[TRAINING_EXAMPLES])
    for tenant in sorted(t for t, cfg in REGISTRY.tenants.items() if cfg.log_sample_rate > 0):
        guard >> spark_job(f"served_{tenant}", ["training-examples", "--day", DAY_BEFORE_AS_OF, "--source",
                                                "served", "--tenant", tenant,
                                                "--label-window-minutes", "{{ params.label_window_minutes }}"],
                           outlets=[TRAINING_EXAMPLES])
