"""Event-selection rules compared and served, on real Spark + Iceberg, a real KV server and the API.

Two window days and one scored day are planted so that long-dwell clicks come back the next
day: dwell must rank first, with recall@2 / NDCG@2 computed by hand below. A rule defined in
this module (``shortest_dwell``) is registered through a registry file and runs like the
built-ins. The registered experiment's datasets are then served to a tenant through the API,
trimmed by the trimmer's code with a TTL to the experiment's end, and removed by the cleanup.
"""
import datetime as dt
import math
import time
import tomllib
import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient
from pyspark.sql import functions as F

from batch import jobs
from batch.__main__ import make_io
from iceberg_schemas.migrate import migrate
from usersignals import lake, trimmer
from usersignals.events import decode_stored
from usersignals.kv import SequenceStore, StoredEvent
from usersignals.registry import load_registry
from usersignals.settings import REPO_ROOT

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
AS_OF = dt.datetime(2026, 11, 22, 0, 0, tzinfo=UTC)  # scored day 2026-11-21, window 11-19 and 11-20
READER = {"X-API-Key": "exp-reader-key"}
# The experiment runs until 30 days after today (wall clock): its KV keys' TTL counts from now.
ENDS = dt.date.today() + dt.timedelta(days=30)


def shortest_dwell(events):
    """A rule defined outside batch.selection, registered by the test's registry file."""
    return events.withColumn("score", -F.coalesce(F.col("dwell_ms"), F.lit(0)).cast("double"))


def utc(moment: dt.datetime) -> dt.datetime:
    """A timestamp Spark returned (naive, in the session's time zone, UTC here) as an aware one."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def at(day, hour, minute=0):
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=UTC)


# (event_id, user, type, item, time, dwell_ms)
EVENTS = [
    # u1: a and d were dwelt on long and come back on the 21st; b and c are the newest.
    ("e1", "u1", "click", "a", at(19, 10), 9000), ("e4", "u1", "click", "d", at(19, 12), 8000),
    ("e2", "u1", "click", "b", at(20, 9), 100), ("e3", "u1", "click", "c", at(20, 10), 50),
    # u2: the newest two include e; a long-dwell click on e before the window must not count.
    ("e0", "u2", "click", "e", at(18, 23), 99999),
    ("e5", "u2", "click", "a", at(19, 8), 5000), ("e6", "u2", "click", "e", at(20, 20), 10),
    ("e7", "u2", "click", "f", at(20, 21), 20),
    # u3: h twice (one item in the ranking), i the newest.
    ("e8", "u3", "click", "h", at(19, 1), 7000), ("e9", "u3", "click", "h", at(20, 1), 6000),
    ("e10", "u3", "click", "i", at(20, 23), 10),
    # u4: events, no engagement next day (not evaluated)
    ("e11", "u4", "click", "a", at(20, 5), 10),
    # the scored day (21st): relevant engagements; the click at 00:00 is not in the window
    ("n1", "u1", "click", "a", at(21, 0), 10), ("n2", "u1", "repin", "d", at(21, 9), None),
    ("n3", "u2", "repin", "e", at(21, 9), None), ("n4", "u2", "closeup", "g", at(21, 10), 3000),
    ("n5", "u3", "click", "h", at(21, 11), 40), ("n6", "u3", "view", "i", at(21, 12), None),
    ("n7", "u5", "click", "a", at(21, 13), 40),  # no events in the window (not evaluated)
]
DATASET = {"click": "clicks", "repin": "repins", "closeup": "closeups", "view": "views"}
L2 = 1 / math.log2(3)  # the gain of a hit in 2nd place
# Per user (u1, u2, u3) recall@2 and NDCG@2, ranking = selected events by the rule's score, items deduped:
EXPECTED = {
    # last: u1 [c, b] no hit; u2 [f, e] e 2nd of {e, g}; u3 [i, h] h 2nd of {h}
    "last": ((0 + 0.5 + 1) / 3, (0 + L2 / (1 + L2) + L2) / 3),
    # dwell: u1 [a, d] both; u2 [a, f] none; u3 [h] (e8, e9 the same item) 1st
    "dwell": ((1 + 0 + 1) / 3, (1 + 0 + 1) / 3),
    # shortest dwell: u1 [c, b] none; u2 [e, f] e 1st of {e, g}; u3 [i, h] h 2nd
    "shortest_dwell": ((0 + 0.5 + 1) / 3, (0 + 1 / (1 + L2) + L2) / 3),
}


def registry_text(tenant=True) -> str:
    text = (REPO_ROOT / "usersignals" / "default_registry.toml").read_text()
    raw_tail = f'''
[selection_rules.shortest_dwell]
function = "tests.integration.test_selection:shortest_dwell"
description = "Shortest dwell first (a rule of the test module)."

[experiments.dwell_test]
dataset = "clicks"
rules = ["last", "dwell"]
n = 2
ends = {ENDS.isoformat()}
'''
    if tenant:
        raw_tail += '''
[tenants.exp_reader]
sequences = { exp_dwell_test_dwell = 2, exp_dwell_test_last = 2 }
filters = { dedup_items = false }
timeout_ms = 10000
api_key_sha256 = "7b2b549be3bd5dd34dd27f992ce2df7d2891eb6d29606a3555f349f6008a3245"  # sha256 of exp-reader-key
'''
    return text + raw_tail


def planted_lake(root, registry_toml: str, kv_server, new_lake, embedding=lambda item: [1.0, 0.0]):
    """A new lake under ``root`` with the registry ``registry_toml``, EVENTS as the stream's enriched
    rows and items a..i with ``embedding(item)``: ``(settings, registry, spark, io, registry path)``."""
    from batch.session import spark_session

    path = root / "registry.toml"
    path.write_text(registry_toml)
    settings = new_lake(root, kv_port=kv_server.settings.kv_port, registry_path=path)
    registry = load_registry(path)
    migrate(lake.load_catalog(settings), settings, registry)
    spark = spark_session(settings, f"test-{root.name}")
    io = make_io(spark, settings)
    rows = [(eid, u, t, item, ts, "home", dwell, None, DATASET[t], ts, "stream", "c1", 0.5)
            for eid, u, t, item, ts, dwell in EVENTS]
    io.append(lake.ENRICHED_EVENTS, spark.createDataFrame(rows, (
        "event_id string, user_id string, event_type string, item_id string, event_time timestamp, "
        "surface string, dwell_ms bigint, query string, dataset string, indexed_at timestamp, "
        "enriched_by string, category string, popularity double")))
    io.append(lake.ITEM_FEATURES, spark.createDataFrame(
        [(i, "c1", 0.5, embedding(i), at(1, 0)) for i in "abcdefghi"],
        "item_id string, category string, popularity double, embedding array<float>, updated_at timestamp"))
    return settings, registry, spark, io, path


@pytest.fixture(scope="module")
def env(tmp_path_factory, kv_server, new_lake):
    settings, registry, spark, io, path = planted_lake(
        tmp_path_factory.mktemp("selection"), registry_text(), kv_server, new_lake,
        embedding=lambda i: [1.0, 0.0] if i in "ad" else [0.0, 1.0])
    yield settings, registry, io, path
    spark.stop()


def test_rules_compared_served_trimmed_and_cleaned_up(env, kv_client, tmp_path):
    from serving.app import create_app
    from serving.feature_log import FeatureLogger

    settings, registry, io, path = env
    chart = tmp_path / "chart.svg"
    figs = jobs.select_experiment(io, registry, "dwell_test", "clicks", ["dwell", "similarity", "shortest_dwell"], 2,
                                  days=2, as_of=AS_OF, chart_path=str(chart))

    # --- the comparison ------------------------------------------------------------------
    report = {r["rule"]: r for r in io.read(lake.SELECTION_REPORTS).collect()}
    assert set(report) == {"last", "dwell", "similarity", "shortest_dwell"}
    for rule, (recall, ndcg) in EXPECTED.items():
        assert report[rule]["recall_at_k"] == pytest.approx(recall), rule
        assert report[rule]["ndcg_at_k"] == pytest.approx(ndcg), rule
        assert report[rule]["users_evaluated"] == 3
    best = max(report.values(), key=lambda r: (r["recall_at_k"], r["ndcg_at_k"]))
    assert best["rule"] == "dwell"
    assert report["dwell"]["recall_lift"] == pytest.approx(EXPECTED["dwell"][0] / EXPECTED["last"][0] - 1)
    assert report["last"]["recall_lift"] == 0.0 and report["last"]["baseline_rule"] == "last"
    w = report["dwell"]
    assert (utc(w["window_start"]), utc(w["window_end"]), w["eval_day"], w["k"]) == (
        at(19, 0), at(21, 0), "2026-11-21", 2)
    assert figs["rules"]["dwell"]["recall_at_k"] == pytest.approx(2 / 3) and figs["served"] is True
    titles = [t.text for t in ET.parse(chart).getroot().iter("{http://www.w3.org/2000/svg}title")]
    assert "dwell recall@2: 0.6667" in titles and len(titles) == 8

    # a re-run of the same window replaces its report rows, not adds to them
    jobs.select_experiment(io, registry, "dwell_test", "clicks", ["dwell"], 2, days=2, as_of=AS_OF,
                           chart_path=str(chart))
    assert sorted(r["rule"] for r in io.read(lake.SELECTION_REPORTS).collect()) == ["dwell", "last"]

    # --- served: the registered rules' picks, in the lake and the KV layer ---------------------
    picked = {(r["rule"], r["user_id"]): r["event_id"] for r in
              io.read(lake.SELECTED_SEQUENCES).where("`rank` = 1").collect()}
    assert picked[("dwell", "u1")] == "e1" and picked[("last", "u1")] == "e3"
    assert {r["dataset"] for r in io.read(lake.SELECTED_SEQUENCES).collect()} == {
        "exp_dwell_test_dwell", "exp_dwell_test_last"}
    store = SequenceStore(kv_client, registry, settings.kv_prefix)
    ttl = kv_client.ttl(store.seq_key("exp_dwell_test_dwell", "u1"))
    to_end = dt.datetime.combine(ENDS, dt.time(), tzinfo=UTC).timestamp() - time.time()
    assert to_end - 120 < ttl <= to_end + 1  # trimmed by the job: the keys expire when the experiment ends

    with TestClient(create_app(settings, registry, feature_logger=FeatureLogger(None, "x"))) as api:
        def served(user):
            r = api.post("/v1/features", json={"tenant": "exp_reader", "user_ids": [user], "format": "json"},
                         headers=READER)
            assert r.status_code == 200, r.text
            seqs = r.json()["users"][0]["sequences"]
            return {d: [e["event_id"] for e in seqs[d]] for d in seqs}

        # newest first, like every dataset: the rule decides which events, the KV layer their order
        assert served("u1") == {"exp_dwell_test_dwell": ["e4", "e1"], "exp_dwell_test_last": ["e3", "e2"]}
        assert served("u3") == {"exp_dwell_test_dwell": ["e9", "e8"], "exp_dwell_test_last": ["e10", "e9"]}

        # --- trimmed: the dataset grows past n, the trimmer cuts it back and keeps the TTL -------
        stale = trimmer.reload(load_registry(), path)  # what a running trimmer picks up from the file
        assert "exp_dwell_test_dwell" in stale.datasets
        extra = [StoredEvent("exp_dwell_test_dwell", "u1", f"x{i}", 1_800_000_000_000 + i,
                             b'{"event_id":"x%d","item_id":"a","ts":%d}' % (i, 1_800_000_000_000 + i))
                 for i in range(3)]
        store.write(extra)
        assert store.length("exp_dwell_test_dwell", "u1") == 5
        stats = SequenceStore(kv_client, stale, settings.kv_prefix).trim_all()
        assert stats.events_removed == 3 and store.length("exp_dwell_test_dwell", "u1") == 2
        assert to_end - 120 < kv_client.ttl(store.seq_key("exp_dwell_test_dwell", "u1")) <= to_end + 1
        assert [decode_stored(x)["event_id"] for x in store.read("u1", {"exp_dwell_test_dwell": 2})[
            "exp_dwell_test_dwell"]] == ["x2", "x1"]

        # --- cleanup: nothing before the end; everything of the experiment after it -------------
        before = jobs.select_cleanup(io, registry, as_of=AS_OF, store=store)
        assert before["ended"] == [] and store.length("exp_dwell_test_last", "u1") == 2
        end = dt.datetime.combine(ENDS, dt.time(), tzinfo=UTC)
        figs = jobs.select_cleanup(io, registry, as_of=end, store=store)
        assert figs["ended"] == ["dwell_test"] and figs["still_registered"] == ["dwell_test"]
        assert figs["lake_rows"] == 2 * 7 and figs["kv_keys"] == 2 * 2 * 4  # 2 datasets x 2 keys x 4 users
        assert list(kv_client.scan_iter(match=f"{settings.kv_prefix}:*exp_dwell_test*")) == []
        assert io.read(lake.SELECTED_SEQUENCES).count() == 0
        assert io.read(lake.SELECTION_REPORTS).count() == 2  # the results stay
        assert served("u1") == {"exp_dwell_test_dwell": [], "exp_dwell_test_last": []}
        with pytest.raises(ValueError, match="experiment 'dwell_test' ended on"):
            jobs.select_experiment(io, registry, "dwell_test", "clicks", ["dwell"], 2, days=2, as_of=end)


def test_an_unregistered_experiment_is_compared_only_and_bad_rules_are_named(env, kv_client, tmp_path):
    settings, registry, io, _ = env
    figs = jobs.select_experiment(io, registry, "adhoc", "clicks", ["dwell"], 2, days=2, as_of=AS_OF,
                                  chart_path=str(tmp_path / "adhoc.svg"))
    assert figs["served"] is False and "kv_rows" not in figs
    assert figs["rules"]["dwell"]["recall_at_k"] == pytest.approx(EXPECTED["dwell"][0])
    assert io.read(lake.SELECTED_SEQUENCES).where("experiment = 'adhoc'").count() == 0
    assert list(kv_client.scan_iter(match=f"{settings.kv_prefix}:*exp_adhoc*")) == []
    with pytest.raises(ValueError, match="unknown selection rule 'recency'"):
        jobs.select_experiment(io, registry, "adhoc", "clicks", ["recency"], 2, days=2, as_of=AS_OF)
    with pytest.raises(ValueError, match="registered with dataset 'clicks' and n 2; this run asks for 'clicks' and 3"):
        jobs.select_experiment(io, registry, "dwell_test", "clicks", ["dwell"], 3, days=2, as_of=AS_OF)
