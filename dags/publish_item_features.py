"""Airflow DAG: publish the newest item features from the lake to the KV layer, where the stream's
and the API's enrichment read them (one JSON object per item, ``usersignals.features``).

``item_features`` is written outside Airflow: by the item catalog's upstream in production, by
``infra/generator.py`` locally. No task of ours can announce that write as an asset event, so the
DAG runs hourly, at :15, and publishes every item's newest row (idempotent: a run with nothing
new rewrites the same values). To publish sooner after an upstream load, trigger the DAG (UI,
``airflow dags trigger publish_item_features`` or the REST API).
"""
from __future__ import annotations

from airflow.sdk import CronTriggerTimetable

from _usersignals import KV_ITEM_FEATURES, spark_job, usersignals_dag

with usersignals_dag(
    dag_id="publish_item_features",
    description="Newest item features: lake -> KV layer, hourly",
    schedule=CronTriggerTimetable("15 * * * *", timezone="UTC"),
    tags=["features"],
    doc_md=__doc__,
    timeout_h=1,
) as dag:
    spark_job("publish", ["publish-features"], outlets=[KV_ITEM_FEATURES])
