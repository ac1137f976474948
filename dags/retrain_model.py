"""Retrain the item/user embedding model and publish it if it is better.

build training data → train ALS → evaluate on a holdout day against the popularity baseline
and the promoted model → gate → record (``model_runs``), then publish: the run's version, if the
gate promoted it and it is the newest promoted, becomes current in the KV layer (atomic switch;
``python -m batch model-rollback`` switches back). The version is named by the run's as-of (its
data interval's end, or when an asset-triggered run was due): re-running a run replaces its
version in ``item_embeddings``, ``user_embeddings`` and ``model_runs`` instead of adding one.
Runs weekly, and also as soon as every event type's daily re-enrichment has refreshed the lake
(data-aware: all per-type enriched-events assets).
The gate's decision and metrics are in the train task's log, in ``model_runs`` and in
``var/metrics/batch_retrain.prom``.
"""
from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param

from _usersignals import (AS_OF, DAY_BEFORE_AS_OF, ENRICHED_BY_TYPE, ITEM_EMBEDDINGS, KV_EMBEDDINGS, MODEL_RUNS,
                          spark_job, usersignals_dag)

all_types_refreshed = None
for asset in ENRICHED_BY_TYPE.values():
    all_types_refreshed = asset if all_types_refreshed is None else all_types_refreshed & asset

with usersignals_dag(
    dag_id="retrain_model",
    description="Train, evaluate, gate and publish the ALS item/user embedding model",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 4 * * 1", timezone="UTC"),
                                 assets=all_types_refreshed),
    tags=["model"],
    doc_md=__doc__,
    timeout_h=4,
    params={
        "train_days": Param(28, type="integer", minimum=1, maximum=365,
                            description="Training window: days before the holdout day"),
        "iterations": Param(10, type="integer", minimum=1, maximum=50, description="ALS iterations"),
        "reg": Param(1.0, type="number", minimum=0, description="ALS regularisation"),
        "alpha": Param(1.0, type="number", minimum=0, description="Implicit-feedback confidence scale"),
        "k": Param(10, type="integer", minimum=1, maximum=500, description="K of recall@K and NDCG@K"),
        "margin": Param(0.02, type="number", minimum=-1, maximum=1,
                        description="Relative improvement over baseline and current model needed to promote"),
        "seq_half_life_h": Param(72.0, type="number", exclusiveMinimum=0, maximum=8760,
                                 description="Sequence model (evaluated beside ALS, promotes nothing): an event "
                                             "this many hours older weighs half as much"),
    },
) as dag:
    # The version is the run's as-of (a re-run replaces it); the holdout day the day before its
    # day. The rank is the registry's model.embedding_dim (what serving expects), not a parameter.
    train = spark_job("train_evaluate_gate", [
        "retrain", "--as-of", AS_OF, "--holdout-day", DAY_BEFORE_AS_OF,
        "--train-days", "{{ params.train_days }}",
        "--iterations", "{{ params.iterations }}", "--reg", "{{ params.reg }}",
        "--alpha", "{{ params.alpha }}", "--k", "{{ params.k }}", "--margin", "{{ params.margin }}",
        "--seq-half-life-h", "{{ params.seq_half_life_h }}"],
        outlets=[ITEM_EMBEDDINGS, MODEL_RUNS])
    # This run's version, if the gate promoted it and no newer run's was (a backfill publishes nothing).
    publish = spark_job("publish", ["publish-model", "--as-of", AS_OF], outlets=[KV_EMBEDDINGS])
    train >> publish
