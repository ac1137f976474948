"""Airflow DAGs of the daily re-enrichment, one per registered event type (generated from the registry).

Each run recomputes one UTC day (the run's data interval) of that type's enriched events
from raw events and current item features, deduplicates, overwrites the day's partitions
and repairs the KV layer where the stream missed or mis-enriched events. Re-running a
day is safe (idempotent); use the UI's Backfill to redo a range of days.
"""
from __future__ import annotations

from _usersignals import ENRICHED_BY_TYPE, ENRICHED_EVENTS, REGISTRY, spark_job, usersignals_dag

for event_type in REGISTRY.event_types:
    dataset = REGISTRY.dataset_for_type(event_type).name
    with usersignals_dag(
        dag_id=f"daily_enrichment_{event_type}",
        description=f"Re-enrich one day of '{event_type}' events (dataset {dataset}) and repair the KV layer",
        schedule="@daily",
        tags=["offline-indexing", f"event-type:{event_type}"],
        doc_md=__doc__,
        timeout_h=3,
    ) as dag:
        spark_job("reenrich", ["daily", "--day", "{{ data_interval_start | ds }}", "--event-types", event_type],
                  outlets=[ENRICHED_EVENTS, ENRICHED_BY_TYPE[event_type]])
    globals()[dag.dag_id] = dag
