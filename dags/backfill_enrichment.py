"""Backfill an enrichment onto already indexed events (lake and KV layer).

After adding an enrichment to a dataset in the registry (new events get it from the
stream), run this with the enrichment's name: its columns are added to
``enriched_events`` (schema change, no rewrite), the N days of partitions before the run's
data interval end get the values, and every user's retained sequence is rewritten in the KV layer.
"""
from __future__ import annotations

from airflow.sdk import Param

from _usersignals import AS_OF, ENRICHED_EVENTS, REGISTRY, spark_job, usersignals_dag

with usersignals_dag(
    dag_id="backfill_enrichment",
    description="Add an enrichment's features to indexed events in the lake and the KV layer",
    schedule=None,
    tags=["offline-indexing", "backfill"],
    doc_md=__doc__,
    timeout_h=4,
    params={
        "enrichment": Param(sorted(REGISTRY.enrichments)[0], type="string", enum=sorted(REGISTRY.enrichments),
                            title="Enrichment", description="A registered enrichment used by at least one dataset"),
        "days": Param(30, type="integer", minimum=1, maximum=365, title="Days",
                      description="Days of enriched events to rewrite, ending at the run's data interval end"),
    },
) as dag:
    spark_job("backfill", ["backfill-enrichment", "--enrichment", "{{ params.enrichment }}",
                           "--days", "{{ params.days }}", "--as-of", AS_OF], outlets=[ENRICHED_EVENTS])
