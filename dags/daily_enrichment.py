"""Airflow DAGs of the daily re-enrichment, one per registered event type (generated from the registry).

Each run recomputes one UTC day, its data interval (the run at midnight re-enriches the day that
ended then; a manual run, the last complete day), of that type's enriched events from raw events
and current item features, deduplicates, overwrites the day's partitions
and repairs the KV layer where the stream missed or mis-enriched events. Re-running a
day is safe (idempotent); use the UI's Backfill to redo a range of days. A day that had no run
(the scheduler was down, the DAG paused) is not skipped: the DAG catches up, and the scheduler
creates the missed days' runs, oldest first, one at a time; runs of days older than
``USERSIGNALS_CATCHUP_DAYS`` skip their work (docs/operations/airflow.md).

Then, where a tenant serves a dataset of the type, ``skew`` measures the day's online/offline
feature skew of those datasets (``python -m batch skew --event-types <type>``: a sample of what
the API logged, against the lake's rebuild of the same requests) into ``feature_skew`` and the
``usersignals_feature_skew_ratio`` gauges. It runs here, after the type's re-enrichment of the same
interval, rather than in a DAG of its own: that needs no sensor across DAGs, and a failed or late
re-enrichment holds back only its own type's measurement (docs/operations/skew.md).
"""
from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable

from _usersignals import (ENRICHED_BY_TYPE, ENRICHED_EVENTS, REGISTRY, catchup_window, spark_job, table_asset,
                          usersignals_dag)

FEATURE_SKEW = table_asset("feature_skew")

for event_type in REGISTRY.event_types:
    dataset = REGISTRY.dataset_for_type(event_type).name
    with usersignals_dag(
        dag_id=f"daily_enrichment_{event_type}",
        description=f"Re-enrich one day of '{event_type}' events (dataset {dataset}) and repair the KV layer",
        # A day's interval, run when it has ended: "@daily" is a cron trigger in Airflow 3, whose
        # runs' interval is their moment (midnight), and would re-enrich the day just begun.
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        tags=["offline-indexing", f"event-type:{event_type}"],
        doc_md=__doc__,
        timeout_h=3,
        repairs_days=True,
    ) as dag:
        guard = catchup_window()
        reenrich = spark_job("reenrich", ["daily", "--day", "{{ data_interval_start | ds }}", "--event-types",
                                          event_type], outlets=[ENRICHED_EVENTS, ENRICHED_BY_TYPE[event_type]])
        guard >> reenrich
        served = {ds.name for ds in REGISTRY.datasets_for(event_type) if ds.experiment is None}
        if any(served & set(t.sequences) for t in REGISTRY.tenants.values()):
            reenrich >> spark_job("skew", ["skew", "--day", "{{ data_interval_start | ds }}", "--event-types",
                                           event_type], outlets=[FEATURE_SKEW])
    globals()[dag.dag_id] = dag
