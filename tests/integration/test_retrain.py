"""Retraining on a real local Spark + Iceberg lake: ALS beats popularity on planted structure,
the gate decides and records, publishing switches the KV layer's embeddings atomically, and
both enrichers (stream and serving) read the published version; rollback switches back. The
sequence model is evaluated next to ALS and recorded, and beats it where users' recent
interest differs from their long-term one."""
import asyncio
import datetime as dt
import random
from dataclasses import replace

import numpy as np
import pytest

from batch.__main__ import make_io
from batch.retrain import TrainParams, interactions, publish, retrain
from iceberg_schemas.migrate import migrate
from infra.generator import WorkloadConfig, history
from usersignals import lake, models
from usersignals.features import ItemFeatureStore
from usersignals.registry import load_registry

pytestmark = pytest.mark.integration

HOLDOUT = dt.date(2026, 11, 20)
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def env(tmp_path_factory, kv_server, new_lake):
    from batch.session import spark_session

    settings = new_lake(tmp_path_factory.mktemp("retrain"), kv_port=kv_server.settings.kv_port)
    catalog = lake.load_catalog(settings)
    migrate(catalog, settings, load_registry())
    end = dt.datetime.combine(HOLDOUT + dt.timedelta(days=1), dt.time(), UTC)
    rows = history(WorkloadConfig(users=400, items=3000, categories=12, seed=3), 60_000,
                   int((end - dt.timedelta(days=10)).timestamp() * 1000), int(end.timestamp() * 1000))
    for r in rows:
        r["event_time"] = dt.datetime.fromtimestamp(r["event_time"] / 1e6, UTC)
        r["indexed_at"] = dt.datetime.fromtimestamp(r["indexed_at"] / 1e6, UTC)
    lake.append_rows(catalog, lake.table_id(settings, lake.ENRICHED_EVENTS), rows)
    spark = spark_session(settings, "test-retrain")
    yield settings, make_io(spark, settings)
    spark.stop()


PARAMS = TrainParams(train_days=9, iterations=8, k=10, margin=0.02)


def test_training_data_stops_before_the_holdout_day(env):
    _, io = env
    from pyspark.sql import functions as F

    end = dt.datetime.combine(HOLDOUT, dt.time(), UTC)
    start = end - dt.timedelta(days=3)
    events = io.read(lake.ENRICHED_EVENTS)
    train = interactions(events, start, end, load_registry().training_weights())
    in_window = events.where((F.col("event_time") >= F.lit(start)) & (F.col("event_time") < F.lit(end))) \
        .dropDuplicates(["event_id"]).count()
    assert train.agg(F.sum("events")).first()[0] == in_window  # every event before D, none from D on
    assert events.where(F.col("event_time") >= F.lit(end)).count() > 1000  # and there were later ones
    assert train.where("weight <= 0").count() == 0


def test_retrain_gate_publish_and_rollback(env, kv_client):
    settings, io = env
    first = retrain(io, load_registry(), HOLDOUT, PARAMS, as_of=dt.datetime(2026, 11, 21, 1, tzinfo=UTC))
    # The planted interests make personalisation pay: the model clearly beats popularity.
    assert first["recall_at_k"] > 1.3 * first["baseline_recall_at_k"], first
    assert first["ndcg_at_k"] > 1.3 * first["baseline_ndcg_at_k"], first
    assert first["promoted"] and first["current_version"] is None and "promoted" in first["decision"]

    # Same data, same seed: the candidate ties the promoted model, so the gate says no.
    second = retrain(io, load_registry(), HOLDOUT, PARAMS, as_of=dt.datetime(2026, 11, 21, 2, tzinfo=UTC))
    assert second["current_version"] == first["model_version"]
    assert not second["promoted"] and "current model" in second["decision"]
    runs = io.read(lake.MODEL_RUNS).orderBy("trained_at").collect()
    assert [r["promoted"] for r in runs] == [True, False]

    # Publish: the promoted version becomes current; both enrichers read its embeddings.
    out = publish(io, load_registry(), kv_client, settings.kv_prefix)
    v1 = first["model_version"]
    assert out["published"] == v1 and models.current_version(kv_client, settings.kv_prefix) == v1
    lake_vec = {r["item_id"]: r["embedding"] for r in io.read(lake.ITEM_EMBEDDINGS)
                .where(f"model_version = '{v1}'").limit(3).collect()}
    item = next(iter(lake_vec))
    stream_side = ItemFeatureStore(kv_client, settings.kv_prefix).get_many([item])[item]
    assert np.allclose(stream_side["embedding"], lake_vec[item], atol=1e-5)
    assert len(stream_side["embedding"]) == load_registry().model.embedding_dim
    assert serving_embedding(settings, item) == pytest.approx(stream_side["embedding"])
    assert publish(io, load_registry(), kv_client, settings.kv_prefix)["published"] == v1  # idempotent
    with pytest.raises(ValueError, match="not promoted"):
        publish(io, load_registry(), kv_client, settings.kv_prefix, second["model_version"])

    # A forced promotion (negative margin), published, then rolled back.
    third = retrain(io, load_registry(), HOLDOUT, TrainParams(train_days=9, iterations=3, k=10, margin=-0.9, seed=11),
                    as_of=dt.datetime(2026, 11, 21, 3, tzinfo=UTC))
    assert third["promoted"]
    publish(io, load_registry(), kv_client, settings.kv_prefix)
    v3 = third["model_version"]
    assert models.versions(kv_client, settings.kv_prefix) == {"current": v3, "previous": v1}
    assert models.rollback(kv_client, settings.kv_prefix) == v1
    assert models.current_version(kv_client, settings.kv_prefix) == v1
    store = ItemFeatureStore(kv_client, settings.kv_prefix, version_ttl_s=0)
    assert np.allclose(store.get_many([item])[item]["embedding"], lake_vec[item], atol=1e-5)


def test_a_rerun_of_the_same_as_of_replaces_its_version(env, kv_client):
    """The version is the run's as-of: running it again (a retried task, a cleared DAG run)
    replaces that version's rows, one model_runs row and one set of embeddings, and publishing
    the run's as-of publishes that version."""
    settings, io = env
    as_of = dt.datetime(2026, 11, 21, 5, 30, tzinfo=UTC)
    quick = TrainParams(train_days=9, iterations=2, k=10, margin=-0.9)  # always promoted
    runs_before = io.read(lake.MODEL_RUNS).count()

    def version_rows(version):
        return tuple(io.read(t).where(f"model_version = '{version}'").count()
                     for t in (lake.MODEL_RUNS, lake.ITEM_EMBEDDINGS, lake.USER_EMBEDDINGS))

    once = retrain(io, load_registry(), None, quick, as_of=as_of)
    assert once["model_version"] == "als-20261121T053000" and once["holdout_day"] == HOLDOUT.isoformat()
    assert version_rows(once["model_version"]) == (1, once["items"], once["users"])
    again = retrain(io, load_registry(), HOLDOUT, replace(quick, seed=8), as_of=as_of)  # other factors
    assert again["model_version"] == once["model_version"]
    assert again["current_version"] == once["current_version"]  # not its own first run
    assert io.read(lake.MODEL_RUNS).count() == runs_before + 1
    assert version_rows(again["model_version"]) == (1, again["items"], again["users"])
    stored = {r["item_id"]: r["embedding"] for r in io.read(lake.ITEM_EMBEDDINGS)
              .where(f"model_version = '{again['model_version']}'").collect()}
    params = io.read(lake.MODEL_RUNS).where(f"model_version = '{again['model_version']}'").first()["params"]
    assert '"seed": 8' in params

    # Publishing the run's as-of publishes its version, the second run's embeddings.
    out = publish(io, load_registry(), kv_client, settings.kv_prefix, as_of=as_of)
    assert out["published"] == again["model_version"] == models.current_version(kv_client, settings.kv_prefix)
    item = sorted(stored)[0]
    assert np.allclose(ItemFeatureStore(kv_client, settings.kv_prefix).get_many([item])[item]["embedding"],
                       stored[item], atol=1e-5)
    # An earlier run's as-of publishes nothing over the newer version.
    older = publish(io, load_registry(), kv_client, settings.kv_prefix, as_of=dt.datetime(2026, 11, 21, 1, tzinfo=UTC))
    assert (older["published"], older["newest_promoted"]) == (None, again["model_version"])
    with pytest.raises(ValueError, match="not the last day complete"):
        retrain(io, load_registry(), HOLDOUT, quick, as_of=dt.datetime(2026, 11, 23, tzinfo=UTC))
    # Published now: a third run would change the lake's rows under the name serving keeps.
    with pytest.raises(ValueError, match=f"{again['model_version']} is the KV layer's current embedding version"):
        retrain(io, load_registry(), None, quick, as_of=as_of)
    assert version_rows(again["model_version"]) == (1, again["items"], again["users"])


def serving_embedding(settings, item):
    import redis.asyncio as aredis

    from serving.enrich import Enricher
    from serving.model import UserSequences
    from usersignals.features import CachedFeatures

    registry = load_registry()
    tenant = registry.tenants["homefeed_ranking"]

    async def go():
        client = aredis.Redis.from_url(settings.kv_url)
        try:
            enricher = Enricher(client, registry, settings.kv_prefix, CachedFeatures(None))
            user = UserSequences("u", {"clicks": [{"item_id": item, "ts": 1}]}, {})
            await enricher.apply([user], tenant)
            return user.sequences["clicks"][0]["features"]["embedding"]
        finally:
            await client.aclose()

    return asyncio.run(go())


# A second, planted world in the same lake, 20 days after the first (its training window does
# not reach the generator's days): 12 categories of 40 items; background users each keep to one
# category (they teach ALS the categories); drifting users engaged with category A for days,
# then, in the 12 hours before the holdout day, with category B, and on the holdout day repin
# B's items.
DRIFT_HOLDOUT = HOLDOUT + dt.timedelta(days=20)


def drifting_world(seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    day0 = dt.datetime.combine(DRIFT_HOLDOUT, dt.time(), UTC)
    items = {c: [f"p{c}-{j}" for j in range(40)] for c in range(12)}
    popularity = [1.0 / (j + 1) for j in range(40)]  # a few hits per category
    rows: list[dict] = []

    def event(user, category, event_type, hours_before_d):
        t = day0 - dt.timedelta(hours=hours_before_d)
        rows.append({"event_id": f"e{len(rows)}", "user_id": user, "event_type": event_type,
                     "item_id": rng.choices(items[category], popularity)[0], "event_time": t, "surface": "homefeed",
                     "dwell_ms": None, "query": None, "dataset": event_type + "s", "indexed_at": t,
                     "enriched_by": "stream", "category": str(category)})

    for n in range(300):
        user, c = f"bg{n}", n % 12
        for _ in range(20):
            event(user, c, "click", rng.uniform(1, 9 * 24))  # they teach ALS the categories, not active on D
    for n in range(60):
        user, a = f"drift{n}", n % 12
        b = (a + 1 + n // 12) % 12
        for _ in range(24):
            event(user, a, "click", rng.uniform(3 * 24, 9 * 24))  # the long-term interest, 3-9 days back
        for _ in range(4):
            event(user, b, "click", rng.uniform(0.5, 12))  # the new one, in the last 12 hours
        for _ in range(3):
            event(user, b, "repin", -rng.uniform(0, 23))
    return rows


def test_sequence_model_beats_als_when_recent_interest_differs(env):
    settings, io = env
    lake.append_rows(lake.load_catalog(settings), lake.table_id(settings, lake.ENRICHED_EVENTS), drifting_world())
    params = TrainParams(train_days=9, iterations=8, k=10, margin=0.02, seq_half_life_h=6)
    out = retrain(io, load_registry(), DRIFT_HOLDOUT, params, as_of=dt.datetime(2026, 12, 11, 1, tzinfo=UTC))

    assert out["eval_users"] == 60 and out["seq_users"] == 60, out  # every drifting user, each with a sequence
    # ALS weighs the days of A over the hours of B; the decayed sequence follows B.
    # (Measured: ALS 0.0 / 0.0, sequence 0.67 / 0.59 recall / NDCG@10, popularity 0.19 / 0.11.)
    assert out["seq_recall_at_k"] > out["recall_at_k"] + 0.3, out
    assert out["seq_ndcg_at_k"] > out["ndcg_at_k"] + 0.3, out
    assert out["seq_beats_baseline"] and out["seq_recall_at_k"] > 2 * out["baseline_recall_at_k"], out
    run = io.read(lake.MODEL_RUNS).where(f"model_version = '{out['model_version']}'").first()
    assert (run["seq_recall_at_k"], run["seq_ndcg_at_k"], run["seq_beats_baseline"]) == \
        (out["seq_recall_at_k"], out["seq_ndcg_at_k"], True)
    prom = (io.metrics_dir / "batch_retrain.prom").read_text()
    assert f'usersignals_model_holdout_metric{{metric="recall_at_k",model="sequence"}} ' \
           f'{out["seq_recall_at_k"]}' in prom, prom

    # Same data, no decay to speak of (a half-life of a year): the sequence is the plain mean of
    # 24 A clicks and 4 B clicks, A wins, and the sequence model loses what the decay gave it.
    flat = retrain(io, load_registry(), DRIFT_HOLDOUT, TrainParams(
        train_days=9, iterations=8, k=10, margin=0.02, seq_half_life_h=24 * 365),
        as_of=dt.datetime(2026, 12, 11, 2, tzinfo=UTC))
    assert flat["recall_at_k"] == pytest.approx(out["recall_at_k"])  # ALS itself unchanged
    assert flat["seq_recall_at_k"] < 0.7 * out["seq_recall_at_k"], (flat, out)
