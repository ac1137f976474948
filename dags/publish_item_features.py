"""Publish the newest item features from the lake to the KV layer, where the stream's
enrichment reads them. Scheduled on the item_features asset (retraining writes it)."""
from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG

from _usersignals import DEFAULT_ARGS, ITEM_FEATURES, KV_ITEM_FEATURES, START, spark_job

with DAG(
    dag_id="publish_item_features",
    description="Newest item features: lake -> KV layer",
    schedule=[ITEM_FEATURES],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=1),
    default_args=DEFAULT_ARGS,
    tags=["usersignals", "features"],
    doc_md=__doc__,
) as dag:
    spark_job("publish", ["publish-features"], outlets=[KV_ITEM_FEATURES])
