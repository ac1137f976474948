"""Airflow DAG: publish the newest item features from the lake to the KV layer, where the stream's
enrichment reads them. Scheduled on the item_features asset (retraining writes it)."""
from __future__ import annotations

from _usersignals import ITEM_FEATURES, KV_ITEM_FEATURES, spark_job, usersignals_dag

with usersignals_dag(
    dag_id="publish_item_features",
    description="Newest item features: lake -> KV layer",
    schedule=[ITEM_FEATURES],
    tags=["features"],
    doc_md=__doc__,
    timeout_h=1,
) as dag:
    spark_job("publish", ["publish-features"], outlets=[KV_ITEM_FEATURES])
