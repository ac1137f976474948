"""Daily re-enrichment, one DAG per registered event type (generated from the registry).

Each run recomputes one UTC day (the run's data interval) of that type's enriched events
from raw events and current item features, deduplicates, overwrites the day's partitions
and repairs the KV layer where the stream missed or mis-enriched events. Re-running a
day is safe (idempotent); use the UI's Backfill to redo a range of days.
"""
from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG

from _usersignals import DEFAULT_ARGS, ENRICHED_BY_TYPE, ENRICHED_EVENTS, REGISTRY, START, spark_job

for event_type in REGISTRY.event_types:
    dataset = REGISTRY.dataset_for_type(event_type).name
    with DAG(
        dag_id=f"daily_enrichment_{event_type}",
        description=f"Re-enrich one day of '{event_type}' events (dataset {dataset}) and repair the KV layer",
        schedule="@daily",
        start_date=START,
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=dt.timedelta(hours=3),
        default_args=DEFAULT_ARGS,
        tags=["usersignals", "offline-indexing", f"event-type:{event_type}"],
        doc_md=__doc__,
    ) as dag:
        spark_job("reenrich", ["daily", "--day", "{{ data_interval_start | ds }}", "--event-types", event_type],
                  outlets=[ENRICHED_EVENTS, ENRICHED_BY_TYPE[event_type]])
    globals()[dag.dag_id] = dag
