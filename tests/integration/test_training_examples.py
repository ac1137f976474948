"""Point-in-time training examples on real Spark and a real Iceberg catalog: no leakage from the
lake path, and the log-and-wait path (served_features + later labels) gives what the lake gives."""
import datetime as dt
import glob

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from batch import training
from batch.__main__ import make_io
from iceberg_schemas.migrate import migrate
from iceberg_schemas.tables import TRAINING_EXAMPLES
from serving import featurize
from serving.model import UserSequences
from usersignals import lake
from usersignals.registry import load_registry

pytestmark = pytest.mark.integration

DAY = dt.date(2026, 11, 20)
UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 20, 12, tzinfo=UTC)   # the first label's moment
MS = dt.timedelta(milliseconds=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory, new_lake):
    from batch.session import spark_session

    settings = new_lake(tmp_path_factory.mktemp("training"))
    registry = load_registry()
    migrate(lake.load_catalog(settings), settings, registry)
    spark = spark_session(settings, "test-training")
    yield settings, registry, spark, make_io(spark, settings)
    spark.stop()


def raw(spark, rows):
    """raw_events rows from (event_id, user_id, event_type, item_id, event_time, dwell_ms[, surface])."""
    full = [(e, u, t, i, at, (r[0] if r else "home"), d, None, 0, n, at)
            for n, (e, u, t, i, at, d, *r) in enumerate(rows)]
    return spark.createDataFrame(full, "event_id string, user_id string, event_type string, item_id string, "
                                       "event_time timestamp, surface string, dwell_ms bigint, query string, "
                                       "kafka_partition int, kafka_offset bigint, ingested_at timestamp")


def test_item_hash_is_the_apis():
    assert [training.item_hash(i) for i in ("i1", "item-42", "")] == \
        [featurize.item_hash(i) for i in ("i1", "item-42", "")]


def test_lake_examples_hold_only_events_strictly_before_each_label(env, tmp_path):
    settings, registry, spark, io = env
    io.append(lake.ITEM_FEATURES, spark.createDataFrame([
        ("i1", "old", 0.1, None, T0 - dt.timedelta(hours=2)),
        ("i1", "new", 0.9, None, T0 + dt.timedelta(minutes=1)),   # valid only after the first label
        ("r0", "rc", 0.5, None, T0 - dt.timedelta(days=1))],
        "item_id string, category string, popularity double, embedding array<float>, updated_at timestamp"))
    rows = [
        ("c_label", "u1", "click", "i1", T0, 100),                       # the label itself: not its own history
        ("c_before", "u1", "click", "i1", T0 - MS, 200),                 # just before: in
        ("c_same", "u1", "click", "i2", T0, 300),                        # at ts: out
        ("c_after", "u1", "click", "i3", T0 + MS, 400),                  # just after: out
        ("c_old", "u1", "click", "i4", T0 - dt.timedelta(days=31), 1),   # beyond the lookback: out
        ("c_other", "u2", "click", "i1", T0 - dt.timedelta(minutes=5), 1),  # another user's: out
        ("c_label2", "u1", "click", "i5", T0 + dt.timedelta(hours=1), 50),  # second label, an hour later
    ]
    # 25 repins before T0: the registry keeps 20 (repins' retention), newest first.
    rows += [(f"r{k:02d}", "u1", "repin", f"r{k % 2}", T0 - dt.timedelta(minutes=k + 1), k) for k in range(25)]
    rows.append(("r00", "u1", "repin", "r0", T0 - dt.timedelta(minutes=1), 0))   # a replayed duplicate
    io.append(lake.RAW_EVENTS, raw(spark, rows))

    export = (tmp_path / "export").as_uri()
    figs = training.training_examples(io, registry, DAY, label_types=["click"], export_dir=export)
    # Labels: the day's clicks (all but c_old), each an example.
    assert figs["examples"] == 6
    got = io.read(TRAINING_EXAMPLES).where("source = 'lake'")
    clicks = [(r["rank"], r["event_id"], r["category"], r["age_s"]) for r in
              got.where("example_id = 'c_label' AND dataset = 'clicks'").orderBy("rank").collect()]
    assert clicks == [(1, "c_before", "old", pytest.approx(0.001))]
    repins = got.where("example_id = 'c_label' AND dataset = 'repins'").orderBy("rank").collect()
    assert [r["event_id"] for r in repins] == [f"r{k:02d}" for k in range(20)]
    assert [r["item_hash"] for r in repins[:2]] == [training.item_hash("r0"), training.item_hash("r1")]
    assert repins[0]["category"] == "rc" and repins[0]["popularity"] is None   # repins store no popularity
    # An hour later, the first label and what came after it are history, features as of then.
    later = [(r["event_id"], r["category"]) for r in
             got.where("example_id = 'c_label2' AND dataset = 'clicks'").orderBy("rank").collect()]
    assert later == [("c_after", None), ("c_same", None), ("c_label", "new"), ("c_before", "new")]
    # u2's click at T0-5min has no history: one row, no dataset.
    assert [(r["dataset"], r["rank"]) for r in got.where("example_id = 'c_other'").collect()] == [(None, None)]

    # Idempotent: a re-run replaces the day's rows of its source.
    n = got.count()
    training.training_examples(io, registry, DAY, label_types=["click"], export_dir=export)
    assert io.read(TRAINING_EXAMPLES).where("source = 'lake'").count() == n

    # The Parquet export: the API's Arrow layout, one row per example, fixed lengths.
    assert glob.glob(str(tmp_path / "export" / "lake" / "day=2026-11-20" / "*.parquet"))
    table = pq.read_table(tmp_path / "export" / "lake").to_pydict()   # every exported day
    assert set(table["day"]) == {"2026-11-20"}
    i = table["example_id"].index("c_label")
    assert len(table["repins.item_hash"][i]) == 20 and table["repins.mask"][i] == [1] * 20
    assert table["clicks.mask"][i] == [1] + [0] * 99
    assert table["clicks.item_hash"][i][:2] == [training.item_hash("i1"), 0]
    assert table["clicks.type_id"][i][0] == registry.event_types["click"].id
    assert table["clicks.dwell_ms"][i][0] == 200.0
    assert table["views.mask"][i] == [0] * 200

    # A re-run that finds no label empties the day (an overwrite of nothing would leave it stale).
    assert training.training_examples(io, registry, DAY, label_types=["search"])["examples"] == 0
    assert io.read(TRAINING_EXAMPLES).where("source = 'lake'").count() == 0


def test_log_and_wait_gives_the_lake_sequences_when_nothing_was_late(env, tmp_path):
    settings, registry, spark, io = env
    tenant = registry.tenants["homefeed_ranking"]
    day = DAY + dt.timedelta(days=1)
    served_at = dt.datetime.combine(day, dt.time(9), tzinfo=UTC)
    users = {"w1": 30, "w2": 3, "w3": 0}   # events each user has before the request
    rows = []
    for u, n in users.items():
        for k in range(n):
            etype = ("click", "repin", "closeup")[k % 3]
            # Item 3 repeats item 0 (the tenant keeps the newest per item); closeups under 1000 ms
            # of dwell are the tenant's to drop.
            item = f"{u}-item{0 if k == 3 else k}"
            rows.append((f"{u}-{k}", u, etype, item, served_at - dt.timedelta(minutes=k + 1), 990 + k))
    rows.append(("w1-late", "w1", "click", "x", served_at, 5))                      # at the request: future
    rows.append(("w1-eng", "w1", "repin", "y", served_at + dt.timedelta(minutes=5), 5))   # its label
    rows.append(("w2-eng", "w2", "click", "z", served_at + dt.timedelta(hours=2), 5))     # after the window
    io.append(lake.RAW_EVENTS, raw(spark, rows))

    # What the API served each user: the KV layer's newest events (retention), the tenant's
    # filters and lengths, featurized by serving's own code, logged as the FeatureLogger does.
    from serving import filtering, size

    now_ms = int(served_at.timestamp() * 1000)
    seqs = []
    for u in users:
        per_ds = {}
        for ds in tenant.sequences:
            etype = registry.datasets[ds].event_type
            evs = sorted((r for r in rows if r[1] == u and r[2] == etype and r[4] < served_at),
                         key=lambda r: r[4], reverse=True)[:registry.datasets[ds].retention]
            per_ds[ds] = [{"event_id": r[0], "item_id": r[3], "ts": int(r[4].timestamp() * 1000),
                           "surface": "home", "dwell_ms": r[5]} for r in evs]
        seqs.append(UserSequences(u, per_ds))
    filtering.apply(seqs, tenant, now_ms)
    size.apply(seqs, tenant)
    arrays = featurize.to_arrays(seqs, tenant, registry, now_ms)
    served = [(f"req-{u}", tenant.name, 1, served_at, u, "arrow",
               orjson.dumps({n: a[i] for n, a in arrays.items()} | {"views": {}},
                            option=orjson.OPT_SERIALIZE_NUMPY).decode())
              for i, u in enumerate(users)]
    io.append(lake.SERVED_FEATURES, spark.createDataFrame(
        served, "request_id string, tenant string, config_version int, served_at timestamp, user_id string, "
                "format string, features string"))
    # The same moments as a labels table for the lake path.
    spark.createDataFrame([(f"req-{u}:{u}", u, served_at, "x") for u in users],
                          "example_id string, user_id string, ts timestamp, label string") \
        .writeTo(io.name("served_moments")).create()

    export = (tmp_path / "export").as_uri()
    figs = training.training_examples(io, registry, day, source="served", tenant=tenant.name,
                                      label_window_minutes=30, export_dir=export)
    assert figs["examples"] == 3
    labels = {r["user_id"]: r["label"] for r in io.read(TRAINING_EXAMPLES).where("source = 'served'")
              .select("user_id", "label").distinct().collect()}
    assert labels == {"w1": "repin", "w2": "none", "w3": "none"}
    # Another tenant's served examples of the day stay when this tenant's run is redone.
    other = io.read(TRAINING_EXAMPLES).where("source = 'served'").limit(1) \
        .withColumn("tenant", F.lit("search_ranking")).withColumn("example_id", F.lit("other-tenant"))
    io.append(TRAINING_EXAMPLES, other)
    again = training.training_examples(io, registry, day, source="served", tenant=tenant.name,
                                       label_window_minutes=30, export_dir=export)
    assert again["examples"] == 3
    assert io.read(TRAINING_EXAMPLES).where("example_id = 'other-tenant'").count() == 1
    assert io.read(TRAINING_EXAMPLES).where(F.col("tenant") == tenant.name).select("example_id").distinct() \
        .count() == 3
    training.training_examples(io, registry, day, source="lake", tenant=tenant.name,
                               labels_table="served_moments", export_dir=export)

    def read(source):
        t = pq.read_table(tmp_path / "export" / source / f"day={day}").to_pydict()   # served: per tenant
        return {eid: {c: t[c][k] for c in t if "." in c} for k, eid in enumerate(t["example_id"])}

    served_arrays, lake_arrays = read(f"served/{tenant.name}"), read("lake")
    assert set(served_arrays) == set(lake_arrays) == {f"req-{u}:{u}" for u in users}
    for eid, cols in served_arrays.items():
        for c, v in cols.items():
            if c.endswith(".age_s"):
                np.testing.assert_allclose(v, lake_arrays[eid][c], rtol=1e-6, err_msg=f"{eid} {c}")
            else:
                assert v == lake_arrays[eid][c], f"{eid} {c}"
    # Not trivially equal: w1 has a full mix, what it served matches the API's own arrays.
    w1 = served_arrays["req-w1:w1"]
    assert (sum(w1["clicks.mask"]), sum(w1["repins.mask"]), sum(w1["closeups.mask"])) == (9, 10, 7)
    assert w1["clicks.item_hash"] == arrays["clicks.item_hash"][0].tolist()
    # The table also holds the served rows, event ids unknown (Arrow logs hashes only).
    assert io.read(TRAINING_EXAMPLES).where("source = 'served' AND dataset IS NOT NULL") \
        .where(F.col("event_id").isNotNull()).count() == 0


def test_an_export_that_fails_while_writing_leaves_the_previous_one_whole(env, tmp_path):
    """The day's export is swapped in only once complete: a run that fails while writing (here a
    row whose computation raises) keeps the previous export's files and leaves no staging behind;
    a run that succeeds replaces them."""
    _, _, spark, _ = env
    path = training.export_path((tmp_path).as_uri(), "lake", dt.date(2026, 11, 20))
    training.export_replace(spark, spark.createDataFrame([(1,), (2,)], "n int"), path)
    before = sorted(pq.read_table(tmp_path / "lake").to_pydict()["n"])
    assert before == [1, 2]

    boom = F.udf(lambda n: 1 // (n - 3), "int")   # n = 3 divides by zero inside the write
    failing = spark.createDataFrame([(3,)], "n int").select(boom("n").alias("n"))
    with pytest.raises(Exception, match="ZeroDivisionError"):
        training.export_replace(spark, failing, path)
    assert sorted(pq.read_table(tmp_path / "lake").to_pydict()["n"]) == before
    assert [p.name for p in tmp_path.glob("lake/*")] == ["day=2026-11-20"]   # no staging left

    training.export_replace(spark, spark.createDataFrame([(7,)], "n int"), path)
    assert pq.read_table(tmp_path / "lake").to_pydict()["n"] == [7]
