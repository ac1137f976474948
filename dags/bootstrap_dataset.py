"""Bootstrap a dataset's sequences in the KV layer from the last N days of raw events.

Use it when a new event type (dataset) is registered: the indexing job has kept that type's
events in raw_events since they first arrived, registered or not, so the dataset is usable in
minutes instead of after N days of streaming (docs/operations/new-event-type.md). Each run
loads sequences as of the end of its data interval, so the UI's Backfill over a date range
rebuilds as of each day in turn.
Idempotent: events already in the KV layer are stored once.
"""
from __future__ import annotations

from airflow.sdk import Param

from _usersignals import REGISTRY, spark_job, usersignals_dag

with usersignals_dag(
    dag_id="bootstrap_dataset",
    description="Load datasets' last-N sequences from the lake into the KV layer",
    schedule="@daily",
    tags=["offline-indexing", "bootstrap"],
    doc_md=__doc__,
    timeout_h=2,
    params={
        "datasets": Param(sorted(REGISTRY.realtime_datasets())[:1], type="array",
                          items={"type": "string", "enum": sorted(REGISTRY.realtime_datasets())}, minItems=1,
                          title="Datasets", description="Real-time datasets to build"),
        "days": Param(30, type="integer", minimum=1, maximum=365, title="Days",
                      description="How many days of raw events to read, ending at the run's data interval end"),
    },
    is_paused_upon_creation=True,
) as dag:
    spark_job("bootstrap", ["bootstrap", "--datasets", "{{ params.datasets | join(',') }}",
                            "--days", "{{ params.days }}", "--as-of", "{{ data_interval_end | ts }}"])
