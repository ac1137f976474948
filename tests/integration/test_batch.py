"""Offline jobs in a real local Spark session on a real Iceberg catalog, loading a real KV server."""
import copy
import datetime as dt
import tomllib

import pytest

from batch import jobs
from batch.__main__ import make_io
from iceberg_schemas.migrate import migrate
from usersignals import lake
from usersignals.events import decode_stored
from usersignals.kv import SequenceStore
from usersignals.registry import load_registry, parse_registry
from usersignals.settings import REPO_ROOT

pytestmark = pytest.mark.integration

DAY = dt.date(2026, 11, 20)
UTC = dt.timezone.utc


def at(hour, minute=0, day=DAY):
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=UTC)


def registry_without_popularity():
    raw = tomllib.loads((REPO_ROOT / "usersignals" / "default_registry.toml").read_text())
    raw = copy.deepcopy(raw)
    del raw["enrichments"]["item_popularity"]
    for ds in raw["datasets"].values():
        ds["enrichments"] = [e for e in ds["enrichments"] if e != "item_popularity"]
    return parse_registry(raw)


@pytest.fixture(scope="module")
def env(tmp_path_factory, kv_server, new_lake):
    from batch.session import spark_session

    settings = new_lake(tmp_path_factory.mktemp("batch"), kv_port=kv_server.settings.kv_port)
    registry = registry_without_popularity()  # popularity arrives later, by backfill
    migrate(lake.load_catalog(settings), settings, registry)
    spark = spark_session(settings, "test-batch")
    yield settings, spark, make_io(spark, settings)
    spark.stop()


def raw_rows(spark, rows):
    cols = ("event_id string, user_id string, event_type string, item_id string, event_time timestamp, "
            "surface string, dwell_ms bigint, query string, kafka_partition int, kafka_offset bigint, "
            "ingested_at timestamp")
    return spark.createDataFrame(rows, cols)


def features(spark, rows):
    return spark.createDataFrame(rows, "item_id string, category string, popularity double, "
                                       "embedding array<float>, updated_at timestamp")


def test_jobs_end_to_end_on_the_lake_and_kv(env, kv_client):
    settings, spark, io = env
    registry = registry_without_popularity()
    store = SequenceStore(kv_client, registry, settings.kv_prefix)
    io.append(lake.ITEM_FEATURES, features(spark, [
        ("i1", "old", 0.1, [1.0, 0.0], at(0)), ("i1", "c1", 0.5, [1.0, 0.0], at(1)),  # newest wins
        ("i2", "c2", 0.9, [0.0, 1.0], at(1)), ("i3", "c3", 0.2, [0.9, 0.1], at(1))]))
    raw = [(f"e{i}", "u1", "click", ["i1", "i2", "i3"][i % 3], at(i), "home", 100 * i, None, 0, i, at(i))
           for i in range(6)]
    raw.append(("e0", "u1", "click", "i1", at(0), "home", 0, None, 1, 99, at(7)))  # a replayed duplicate
    raw.append(("v0", "u2", "view", "i2", at(3), None, None, None, 0, 50, at(3)))
    io.append(lake.RAW_EVENTS, raw_rows(spark, raw))
    # What the stream wrote: e1 mis-enriched, e5 missing.
    from pyspark.sql import functions as F
    streamed = io.read(lake.RAW_EVENTS).where("event_id NOT IN ('e5')").dropDuplicates(["event_id"])
    streamed = streamed.withColumn("dataset", F.when(F.col("event_type") == "click", "clicks").otherwise("views")) \
        .withColumn("indexed_at", F.col("ingested_at")).withColumn("enriched_by", F.lit("stream")) \
        .withColumn("category", F.when(F.col("event_id") == "e1", "wrong")
                    .otherwise(F.when(F.col("item_id") == "i1", "c1").when(F.col("item_id") == "i2", "c2")
                               .otherwise("c3")))
    io.append(lake.ENRICHED_EVENTS, streamed)

    # daily: dedup, overwrite the day, repair the KV layer (and idempotent on a re-run)
    figs = jobs.daily_reenrich(io, registry, DAY)
    assert (figs["recomputed"], figs["missing"], figs["mis_enriched"], figs["kv_repaired"]) == (7, 1, 1, 2)
    day = {r["event_id"]: r for r in io.read(lake.ENRICHED_EVENTS).collect()}
    assert len(day) == 7 and day["e1"]["category"] == "c2" and day["e5"]["enriched_by"] == "daily"
    assert io.read(lake.ENRICHED_EVENTS).count() == 7
    repaired = {decode_stored(x)["event_id"]: decode_stored(x) for x in store.read("u1", {"clicks": 100})["clicks"]}
    assert set(repaired) == {"e1", "e5"} and repaired["e1"]["features"] == {"category": "c2"}
    assert repaired["e5"] == {"event_id": "e5", "item_id": "i3", "ts": int(at(5).timestamp() * 1000),
                              "surface": "home", "dwell_ms": 500, "features": {"category": "c3"}}
    assert jobs.daily_reenrich(io, registry, DAY)["missing"] == 0
    assert io.read(lake.ENRICHED_EVENTS).count() == 7

    # bootstrap as of a past moment loads what a run at that moment would have: nothing later
    kv_client.flushall()
    jobs.bootstrap(io, registry, ["clicks"], days=5, as_of=at(3))
    assert [decode_stored(x)["event_id"] for x in store.read("u1", {"clicks": 100})["clicks"]] == ["e2", "e1", "e0"]

    # bootstrap: the last N per user, newest first, straight into KV
    kv_client.flushall()
    figs = jobs.bootstrap(io, registry, ["clicks", "views"], days=5, as_of=at(12))
    assert figs["loaded"] == 7
    ids = [decode_stored(x)["event_id"] for x in store.read("u1", {"clicks": 100})["clicks"]]
    assert ids == ["e5", "e4", "e3", "e2", "e1", "e0"]
    with pytest.raises(ValueError, match="unknown datasets"):
        jobs.bootstrap(io, registry, ["nope"], days=1, as_of=at(12))

    # parity: KV rebuilt from the lake matches; a lost event is caught
    wm = at(12)
    assert jobs.parity(io, registry, store, 10, wm, threshold=0.0, lookback_days=5)["mismatch_rate"] == 0.0
    kv_client.zrem(store.seq_key("clicks", "u1"), "e3")
    with pytest.raises(jobs.ParityError, match="1/2 sequences differ"):
        jobs.parity(io, registry, store, 10, wm, threshold=0.0, lookback_days=5)

    # backfill a new enrichment: column added by schema change, values and KV payloads filled
    full = load_registry()
    figs = jobs.backfill_enrichment(io, full, "item_popularity", days=5, as_of=at(12))
    assert "popularity" in io.read(lake.ENRICHED_EVENTS).columns and figs["lake_rows"] == 6
    pops = {r["event_id"]: r["popularity"] for r in io.read(lake.ENRICHED_EVENTS).collect()}
    assert pops["e0"] == 0.5 and pops["v0"] is None  # views do not use item_popularity
    e4 = next(decode_stored(x) for x in SequenceStore(kv_client, full, settings.kv_prefix)
              .read("u1", {"clicks": 100})["clicks"] if decode_stored(x)["event_id"] == "e4")
    assert e4["features"] == {"category": "c2", "popularity": 0.9}

    # selection rules compared (tests/integration/test_selection.py has the figures): the day's
    # clicks are the window of a run as of two days later; no engagement on the scored day
    figs = jobs.select_experiment(io, full, "dwell2", "clicks", ["dwell"], 2, days=5,
                                  as_of=at(0, day=DAY + dt.timedelta(days=2)),
                                  chart_path=str(settings.data_dir / "dwell2.svg"))
    assert (figs["selected.dwell"], figs["selected.last"], figs["users_evaluated"]) == (2, 2, 0)
    assert figs["served"] is False  # not a registered experiment: nothing in the KV layer

    # maintenance compacts small files: the clicks' partition, rewritten as three files, becomes one
    clicks = io.read(lake.ENRICHED_EVENTS).where("event_type = 'click'")
    rows, schema = clicks.collect(), clicks.schema
    io.overwrite_partitions(lake.ENRICHED_EVENTS, io.spark.createDataFrame(rows[:2], schema))
    io.append(lake.ENRICHED_EVENTS, io.spark.createDataFrame(rows[2:4], schema))
    io.append(lake.ENRICHED_EVENTS, io.spark.createDataFrame(rows[4:], schema))
    files = lambda: io.spark.sql(  # noqa: E731
        f"SELECT count(*) AS n FROM {io.catalog}.{io.namespace}.{lake.ENRICHED_EVENTS}.files").first()["n"]
    assert files() == 4  # three for clicks, one for the view
    figs = jobs.maintenance(io, [lake.ENRICHED_EVENTS, lake.RAW_EVENTS], expire_older_than_days=0, retain_last=1)
    assert figs["enriched_events.rewritten_files"] == 3 and files() == 2
    assert io.read(lake.ENRICHED_EVENTS).count() == 7


def test_publish_features_puts_each_items_newest_features_where_enrichment_reads_them(env, kv_client):
    """``python -m batch publish-features``, the publish_item_features DAG's job: per item, its newest
    row of item_features (null fields left out) becomes what the stream's and the API's
    enrichment read from the KV layer (``ItemFeatureStore``)."""
    from batch.__main__ import parser, run
    from usersignals.features import ItemFeatureStore

    settings, spark, io = env
    io.append(lake.ITEM_FEATURES, features(spark, [
        ("pf1", "old", 0.1, [1.0, 0.0], at(1)), ("pf1", "new", None, [0.5, 0.5], at(2)),  # newest wins
        ("pf2", "c2", 0.25, None, at(1))]))
    items = io.read(lake.ITEM_FEATURES).select("item_id").distinct().count()
    figs = run(parser().parse_args(["publish-features"]), settings, spark)
    assert figs["published"] == items
    got = ItemFeatureStore(kv_client, settings.kv_prefix).get_many(["pf1", "pf2", "nope"])
    assert got == {"pf1": {"category": "new", "embedding": [0.5, 0.5]},
                   "pf2": {"category": "c2", "popularity": 0.25}}  # an item without features: none
