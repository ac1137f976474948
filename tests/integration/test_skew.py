"""Online/offline feature skew on real Spark and a real Iceberg catalog: a day of served features,
made by serving's own filter/size/featurize code from the events the KV layer held, against the
skew job's rebuild of the same requests from the lake. One tenant served what the lake says
(every mismatch count 0); the other served a wrong category on 3 of its 20 clicks (0.15)."""
import datetime as dt

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batch import skew
from batch.__main__ import make_io
from iceberg_schemas.migrate import migrate
from serving import featurize, filtering, size
from serving.enrich import EMBEDDING_F32
from serving.model import UserSequences
from serving.retrieve import Retriever
from usersignals import lake
from usersignals.registry import load_registry

pytestmark = pytest.mark.integration

DAY = dt.date(2026, 11, 20)
UTC = dt.timezone.utc
SERVED_AT = dt.datetime(2026, 11, 20, 10, tzinfo=UTC)
MIN = dt.timedelta(minutes=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory, new_lake):
    from batch.session import spark_session

    settings = new_lake(tmp_path_factory.mktemp("skew"))
    registry = load_registry()
    migrate(lake.load_catalog(settings), settings, registry)
    spark = spark_session(settings, "test-skew")
    yield settings, registry, spark, make_io(spark, settings)
    spark.stop()


def ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def stored(row, features) -> dict:
    """A raw event row as the KV layer stores it (usersignals.events.encode_stored)."""
    eid, _, _, item, at, surface, dwell, query = row
    e = {"event_id": eid, "item_id": item, "ts": ms(at), "surface": surface}
    if dwell is not None:
        e["dwell_ms"] = dwell
    if query is not None:
        e["query"] = query
    return e | {"features": features}


def kv_view(registry, tenant, rows, user, features_of):
    """What the API read from the KV layer for ``user``: per dataset the newest events before the
    request, as many as it fetches (Retriever.fetch_limits), stored with their indexing-time features."""
    out = {}
    for ds, limit in Retriever.fetch_limits(tenant, registry).items():
        etype = registry.datasets[ds].event_type
        fields = registry.indexing_fields(registry.datasets[ds])
        evs = sorted((r for r in rows if r[1] == user and r[2] == etype and r[4] < SERVED_AT),
                     key=lambda r: r[4], reverse=True)[:limit]
        out[ds] = [stored(r, {f: v for f, v in features_of(r[3]).items() if f in fields and v is not None})
                   for r in evs]
    return UserSequences(user, out)


def test_skew_is_zero_where_serving_agrees_with_the_lake_and_counts_each_wrong_value(env):
    settings, registry, spark, io = env
    home, search = registry.tenants["homefeed_ranking"], registry.tenants["search_ranking"]
    dim = registry.model.embedding_dim

    # Item features: every item has a category and popularity; i-items an embedding. A newer
    # version after the request must not be what it is compared with.
    def feats(item):
        k = int(item.split("-")[-1])
        return {"category": f"cat{k % 4}", "popularity": round(0.05 * k, 3),
                "embedding": [float(k)] * dim if item.startswith("i") else None}
    items = {f"i-{k}" for k in range(12)} | {f"s-{k}" for k in range(20)}
    io.append(lake.ITEM_FEATURES, spark.createDataFrame(
        [(i, *feats(i).values(), SERVED_AT - dt.timedelta(days=2)) for i in sorted(items)]
        + [(i, "renamed", 0.99, [9.0] * dim, SERVED_AT + MIN) for i in sorted(items)],
        "item_id string, category string, popularity double, embedding array<float>, updated_at timestamp"))
    # A published model version (v7) has embeddings for i-0 … i-5: the API served those (its
    # overlay), item_features' for the others; v6's, never served, must not be what it is compared with.
    published = {f"i-{k}": [k + 0.5] * dim for k in range(6)}
    io.append(lake.ITEM_EMBEDDINGS, spark.createDataFrame(
        [("v7", i, v, SERVED_AT - dt.timedelta(days=1)) for i, v in published.items()]
        + [("v6", f"i-{k}", [99.0] * dim, SERVED_AT - dt.timedelta(days=3)) for k in range(12)],
        "model_version string, item_id string, embedding array<float>, created_at timestamp"))

    # Events (event_id, user, type, item, time, surface, dwell, query). homefeed's users: h1 with
    # a repeated item (dedup keeps the newest), closeups under its 1000 ms dwell threshold, an event
    # at the request (the future); h2 with two clicks. search_ranking's users: 10 clicks each on its
    # surfaces, one on a surface it does not serve, and searches.
    rows = []
    for k in range(14):
        rows.append((f"h1-c{k}", "h1", "click", f"i-{k % 10}", SERVED_AT - (k + 1) * MIN, "home", 100 * k, None))
    for k in range(6):
        rows.append((f"h1-x{k}", "h1", "closeup", f"i-{k}", SERVED_AT - (k + 1) * MIN, "home", 800 + 100 * k, None))
    for k in range(3):
        rows.append((f"h1-r{k}", "h1", "repin", f"i-{k + 5}", SERVED_AT - (k + 1) * MIN, "home", None, None))
    rows.append(("h1-now", "h1", "click", "i-11", SERVED_AT, "home", 5, None))
    rows += [(f"h2-c{k}", "h2", "click", f"i-{k}", SERVED_AT - (k + 1) * MIN, "home", None, None) for k in range(2)]
    for u, base in (("s1", 0), ("s2", 10)):
        for k in range(10):
            surface = "search" if k % 2 else "homefeed"
            rows.append((f"{u}-c{k}", u, "click", f"s-{base + k}", SERVED_AT - (k + 1) * MIN, surface, 50, None))
        rows.append((f"{u}-off", u, "click", "s-0", SERVED_AT - 30 * MIN, "profile", 50, None))   # filtered out
        rows += [(f"{u}-q{k}", u, "search", f"s-{k}", SERVED_AT - (k + 1) * MIN, "search", None, f"q{k}")
                 for k in range(3)]
    rows.append(("s1-c0", "s1", "click", "s-0", SERVED_AT - MIN, "homefeed", 50, None))   # a replayed duplicate
    io.append(lake.RAW_EVENTS, spark.createDataFrame(
        [(*r[:5], r[5], r[6], r[7], 0, n, r[4]) for n, r in enumerate(rows)],
        "event_id string, user_id string, event_type string, item_id string, event_time timestamp, "
        "surface string, dwell_ms bigint, query string, kafka_partition int, kafka_offset bigint, "
        "ingested_at timestamp"))

    # What the API served, by its own stages, its clock read 30 ms before the log's served_at.
    now_ms = ms(SERVED_AT) - 30
    home_users = [kv_view(registry, home, rows, u, feats) for u in ("h1", "h2")]
    filtering.apply(home_users, home, now_ms)
    size.apply(home_users, home)
    cache = {i: {EMBEDDING_F32: np.asarray(published.get(i, feats(i)["embedding"]), "<f4").tobytes()}
             for i in items if i.startswith("i")}
    arrays = featurize.to_arrays(home_users, home, registry, now_ms, items=cache)
    served = [(f"req-h{n}", home.name, 3, SERVED_AT, u.user_id, "arrow",
               orjson.dumps({c: a[n] for c, a in arrays.items()} | {"views": {}, "embedding_version": "v7"},
                            option=orjson.OPT_SERIALIZE_NUMPY).decode()) for n, u in enumerate(home_users)]
    search_users = [kv_view(registry, search, rows, u, feats) for u in ("s1", "s2")]
    filtering.apply(search_users, search, now_ms)
    size.apply(search_users, search)
    records = featurize.to_json(search_users, registry)
    # The stream had stale categories for 3 of the 20 clicks served.
    for user, pos in ((0, 0), (0, 7), (1, 4)):
        records[user]["sequences"]["clicks"][pos]["features"]["category"] = "stale"
    served += [("req-s", search.name, 1, SERVED_AT, r["user_id"], "json", orjson.dumps(r).decode()) for r in records]
    # A request of the day before: not this day's.
    served.append(("req-old", home.name, 3, SERVED_AT - dt.timedelta(days=1), "h2", "arrow", served[1][6]))
    io.append(lake.SERVED_FEATURES, spark.createDataFrame(
        served, "request_id string, tenant string, config_version int, served_at timestamp, user_id string, "
                "format string, features string"))

    figs = skew.feature_skew(io, registry, DAY)
    got = {(r["tenant"], r["dataset"], r["feature"]): r.asDict()
           for r in io.read(lake.FEATURE_SKEW).where(f"day = DATE '{DAY}'").collect()}

    # homefeed: every served value equals the lake's rebuild; nothing on one side only.
    mask = {ds: int(arrays[f"{ds}.mask"].sum()) for ds in home.sequences}
    assert mask == {"clicks": 12, "repins": 3, "closeups": 4}   # 10 distinct items + h2's 2; dwell >= 1000
    for ds in home.sequences:
        for feature in ("item_id", "type_id", "age_s", "dwell_ms", "embedding"):
            row = got[(home.name, ds, feature)]
            assert (row["compared"], row["mismatched"], row["missing_online"], row["missing_offline"]) == \
                (mask[ds], 0, 0, 0), (ds, feature)
            assert row["mismatch_rate"] == 0.0 and row["requests"] == 2 and row["config_versions"] == "3"

    # search_ranking: 3 of 20 categories differ, exactly; every other feature agrees.
    category = got[(search.name, "clicks", "category")]
    assert (category["compared"], category["mismatched"], category["mismatch_rate"]) == (20, 3, 0.15)
    for feature in ("event_id", "item_id", "event_time", "surface", "dwell_ms", "popularity"):
        row = got[(search.name, "clicks", feature)]
        assert (row["compared"], row["mismatched"], row["missing_online"], row["missing_offline"]) == \
            (20, 0, 0, 0), feature
    assert got[(search.name, "searches", "query")]["compared"] == 6
    assert got[(search.name, "searches", "query")]["mismatched"] == 0
    assert (search.name, "clicks", "query") not in got or got[(search.name, "clicks", "query")]["compared"] == 0
    assert {k: v for k, v in figs.items() if k.endswith(".requests")} == \
        {"homefeed_ranking.requests": 2, "search_ranking.requests": 1}

    # The gauges, from the job's metrics file.
    def gauges(name):
        text = (settings.data_dir / "metrics" / name).read_text()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    metrics = gauges("batch_feature_skew.prom")
    ratio = lambda t, d, f: metrics[("usersignals_feature_skew_ratio",  # noqa: E731
                                     (("dataset", d), ("feature", f), ("tenant", t)))]
    assert ratio(search.name, "clicks", "category") == 0.15
    assert ratio(search.name, "clicks", "popularity") == 0.0 and ratio(home.name, "clicks", "item_id") == 0.0
    assert metrics[("usersignals_feature_skew_values", (("dataset", "clicks"), ("feature", "category"),
                                                        ("outcome", "mismatched"), ("tenant", search.name)))] == 3

    # A re-run for one event type (the click re-enrichment's task) replaces that day's click rows
    # only, and writes its own metrics file.
    def written():
        return {(r["tenant"], r["dataset"], r["feature"]): r["computed_at"]
                for r in io.read(lake.FEATURE_SKEW).collect()}

    before = written()
    skew.feature_skew(io, registry, DAY, event_types=["click"])
    after = written()
    assert set(after) == set(before)
    assert {k[1] for k in after if after[k] != before[k]} == {"clicks"}
    click_metrics = gauges("batch_feature_skew_click.prom")
    assert {dict(k[1])["dataset"] for k in click_metrics if k[0] == "usersignals_feature_skew_ratio"} == {"clicks"}

    # The CLI, sampling one request: the one whose request id hashes lowest, the same each time.
    from pyspark.sql import functions as F

    from batch.__main__ import parser, run

    figs = run(parser().parse_args(["skew", "--day", str(DAY), "--tenant", home.name, "--sample", "1"]), settings,
               spark=spark)
    assert {k: v for k, v in figs.items() if k.endswith(".requests")} == {"homefeed_ranking.requests": 1}
    hashes = spark.createDataFrame([("req-h0",), ("req-h1",)], "r string") \
        .select("r", F.xxhash64("r").alias("h")).orderBy("h", "r").collect()
    chosen = int(hashes[0]["r"][-1])
    row = io.read(lake.FEATURE_SKEW).where(f"tenant = '{home.name}' AND dataset = 'clicks' AND feature = 'item_id'") \
        .first()
    assert (row["requests"], row["compared"], row["mismatched"]) == (1, int(arrays["clicks.mask"][chosen].sum()), 0)
    assert {k: v for k, v in written().items() if k[0] == search.name} == \
        {k: v for k, v in after.items() if k[0] == search.name}   # another tenant's rows stay
