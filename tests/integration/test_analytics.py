"""Saved-query harness: every library query runs on both engines, the embedded one (DuckDB over
the lake) and a real Trino server (infra/trino.py), over one fixture lake with known data, and
its result equals values computed independently here in Python; the two engines' rows agree.

Also: both engines apply merge-on-read deletes (made by Spark), Trino sees a commit made after
it started at once, the CLI says which engine ran (embedded, or the Trino it detects), and
charts render.
"""
import collections
import datetime as dt
import hashlib
import json
import math
import os
import random
import statistics
import subprocess
import sys

import pytest

from analytics.engine import EmbeddedEngine, TrinoEngine
from analytics.library import load_library
from iceberg_schemas.migrate import migrate
from iceberg_schemas.tables import DELETIONS, table_defs
from infra import trino
from infra.stack import free_port
from usersignals import lake
from usersignals.registry import load_registry
from usersignals.settings import REPO_ROOT

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()
LIB = load_library()
TYPES = ["click", "repin", "closeup", "view", "search"]
DATASET = {"click": "clicks", "repin": "repins", "closeup": "closeups", "view": "views", "search": "searches"}


def build_data():
    rng = random.Random(5)
    features = [{"item_id": f"i{k}", "category": f"c{k // 5}", "popularity": k / 10, "embedding": [1.0],
                 "updated_at": NOW - dt.timedelta(days=1)} for k in range(10)]
    features.append({"item_id": "i0", "category": "c9", "popularity": 0.0, "embedding": None,  # older version
                     "updated_at": NOW - dt.timedelta(days=5)})
    raw = []
    for n in range(600):
        t = NOW - dt.timedelta(minutes=rng.randrange(1, 3 * 24 * 60))
        raw.append({"event_id": f"e{n}", "user_id": f"u{rng.randrange(20)}", "event_type": rng.choice(TYPES),
                    "item_id": f"i{rng.randrange(12)}", "event_time": t,  # i10, i11 have no features
                    "surface": rng.choice(["homefeed", "search", None]), "dwell_ms": rng.randrange(0, 5000),
                    "query": None, "kafka_partition": 0, "kafka_offset": n, "ingested_at": t})
    # A close-up → repin pair within the window, and one outside it.
    base = NOW - dt.timedelta(hours=5)
    raw += [dict(raw[0], event_id="f1", user_id="uf", item_id="i3", event_type="closeup", event_time=base),
            dict(raw[0], event_id="f2", user_id="uf", item_id="i3", event_type="repin",
                 event_time=base + dt.timedelta(minutes=10)),
            dict(raw[0], event_id="f3", user_id="uf", item_id="i4", event_type="closeup", event_time=base),
            dict(raw[0], event_id="f4", user_id="uf", item_id="i4", event_type="repin",
                 event_time=base + dt.timedelta(minutes=50))]
    raw += [dict(r, kafka_offset=9000 + k) for k, r in enumerate(raw[:30])]  # replays: duplicate rows
    latest = {f["item_id"]: f for f in features if f["updated_at"] == NOW - dt.timedelta(days=1)}
    enriched = []
    for k, r in enumerate(raw[:560]):  # e560.. and the funnel events: not indexed by the stream
        feat = latest.get(r["item_id"], {})
        ds = DATASET[r["event_type"]]
        enriched.append({key: r[key] for key in ("event_id", "user_id", "event_type", "item_id", "event_time",
                                                  "surface", "dwell_ms", "query")}
                        | {"dataset": ds, "indexed_at": r["event_time"] + dt.timedelta(milliseconds=50 + 7 * k),
                           "enriched_by": "stream" if k % 10 else "daily", "category": feat.get("category"),
                           "popularity": feat.get("popularity") if ds in ("clicks", "closeups") else None})
    enriched += [dict(e) for e in enriched[:5]]  # duplicates from at-least-once replays
    dlq = [{"key": b"u1", "value": b"{", "reason": rng.choice(["not_json", "bad_type", "ts_out_of_range"]),
            "detail": "d", "source_topic": "user_events", "source_partition": 0, "source_offset": n,
            "received_at": NOW - dt.timedelta(minutes=rng.randrange(1, 60 * 60))} for n in range(80)]
    return {"item_features": features, "raw_events": raw, "enriched_events": enriched, "dead_letters": dlq}


DATA = build_data()
# One completed erasure in the audit table (batch.jobs.delete_user writes such rows): what an
# auditor reads on either engine.
AUDIT = {"request_id": "req-7", "user_id_sha256": hashlib.sha256(b"u7").hexdigest(), "requested_by": "dpo@example.com",
         "reason": "art. 17 request 2026-118", "requested_at": NOW - dt.timedelta(hours=3),
         "kv_deleted_at": NOW - dt.timedelta(hours=3) + dt.timedelta(seconds=1),
         "completed_at": NOW - dt.timedelta(hours=2), "removed": '{"kv.clicks": 12, "lake.raw_events": 40}'}
# Dead letters written with the others, then deleted by Spark as merge-on-read position deletes:
# every engine must apply the delete files, or the DLQ query counts them.
PURGED = [dict(d, reason="purged", source_offset=1000 + n) for n, d in enumerate(DATA["dead_letters"][:12])]
ENGINES = ["embedded", "trino"]


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory, new_lake):
    """The fixture lake: DATA (and PURGED, deleted again by Spark) in a catalog of its own."""
    settings = new_lake(tmp_path_factory.mktemp("analytics"))
    catalog = lake.load_catalog(settings)
    migrate(catalog, settings, load_registry())
    for table, rows in DATA.items():
        extra = PURGED if table == lake.DEAD_LETTERS else []
        lake.append_rows(catalog, lake.table_id(settings, table), rows + extra)
    lake.append_rows(catalog, lake.table_id(settings, DELETIONS), [AUDIT])
    from batch.session import spark_session

    spark = spark_session(settings, "test-analytics-deletes")
    try:
        t = f"{settings.lake_catalog}.{settings.lake_namespace}.{lake.DEAD_LETTERS}"
        spark.sql(f"ALTER TABLE {t} SET TBLPROPERTIES ('write.delete.mode'='merge-on-read')")
        spark.sql(f"DELETE FROM {t} WHERE reason = 'purged'")
        deletes = spark.sql(f"SELECT count(*) AS n FROM {t}.delete_files").first()["n"]
    finally:
        spark.stop()
    return settings, deletes


@pytest.fixture(scope="module")
def trino_server(lake_settings, tmp_path_factory):
    """A real Trino (infra/trino.py) in a data dir of its own, on a free port, on the fixture
    lake's catalog database and warehouse. Its log is printed if it does not start."""
    settings, _ = lake_settings
    settings = settings.with_overrides(data_dir=tmp_path_factory.mktemp("trino"), lake_warehouse=settings.warehouse,
                                       trino_port=free_port())
    server = trino.Server(settings)
    try:
        server.start(timeout_s=240)
    except BaseException:
        print(f"--- Trino log ({server.log_path}) ---\n{server.log_tail(200)}", file=sys.stderr)
        server.stop()
        raise
    print(f"Trino ready in {server.startup_s:.1f}s", file=sys.stderr)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def embedded_engine(lake_settings):
    eng = EmbeddedEngine(lake_settings[0])
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def trino_engine(trino_server):
    eng = TrinoEngine(trino_server.settings)
    yield eng
    eng.close()


@pytest.fixture(scope="module", params=ENGINES)
def engine(request, lake_settings):
    """Each saved-query test runs once per engine, on the same lake."""
    return lake_settings[0], request.getfixturevalue(f"{request.param}_engine")


def sql_round(x: float, digits: int) -> float:
    """SQL's ROUND: halves away from zero (Python's round() rounds halves to even)."""
    import decimal

    q = decimal.Decimal(1).scaleb(-digits)
    return float(decimal.Decimal(repr(x)).quantize(q, rounding=decimal.ROUND_HALF_UP))


def run(engine, name, **params):
    _, eng = engine
    return eng.run(LIB[name].render(params)).records()


def in_days(r, start, end, key="event_time"):
    return dt.datetime.combine(start, dt.time(), UTC) <= r[key] < dt.datetime.combine(end, dt.time(), UTC)


START, END = TODAY - dt.timedelta(days=2), TODAY + dt.timedelta(days=1)


def test_daily_active_users(engine):
    got = {(r["day"], r["event_type"]): (r["users"], r["events"]) for r in
           run(engine, "daily_active_users", start_day=START, end_day=END)}
    users, events = collections.defaultdict(set), collections.defaultdict(set)
    for r in DATA["raw_events"]:
        if in_days(r, START, END):
            key = (r["event_time"].date(), r["event_type"])
            users[key].add(r["user_id"])
            events[key].add(r["event_id"])
    assert got == {k: (len(users[k]), len(events[k])) for k in users}


def test_event_mix_by_surface(engine):
    got = {(r["surface"], r["event_type"]): (r["events"], r["share"]) for r in
           run(engine, "event_mix_by_surface", start_day=START - dt.timedelta(days=2), end_day=END)}
    ids = collections.defaultdict(set)
    for r in DATA["raw_events"]:
        ids[(r["surface"] or "(none)", r["event_type"])].add(r["event_id"])
    totals = collections.Counter()
    for (s, _), v in ids.items():
        totals[s] += len(v)
    assert got == {k: (len(v), sql_round(len(v) / totals[k[0]], 4)) for k, v in ids.items()}


def test_sequence_length_distribution(engine):
    got = {r["dataset"]: r for r in run(engine, "sequence_length_distribution", days=30)}
    per = collections.defaultdict(set)
    for e in DATA["enriched_events"]:
        per[(e["dataset"], e["user_id"])].add(e["event_id"])
    by_ds = collections.defaultdict(list)
    for (ds, _), ids in per.items():
        by_ds[ds].append(len(ids))
    assert set(got) == set(by_ds)
    for ds, ns in by_ds.items():
        r = got[ds]
        assert (r["users"], r["min_events"], r["max_events"]) == (len(ns), min(ns), max(ns))
        assert r["mean_events"] == sql_round(statistics.mean(ns), 2)
        assert min(ns) <= r["p50"] <= r["p90"] <= r["p99"] <= max(ns)
        assert abs(r["p50"] - statistics.median(ns)) <= 1


def test_enrichment_coverage(engine):
    got = {(r["day"], r["dataset"]): r for r in run(engine, "enrichment_coverage", start_day=START, end_day=END)}
    groups = collections.defaultdict(list)
    for e in DATA["enriched_events"]:
        if in_days(e, START, END):
            groups[(e["event_time"].date(), e["dataset"])].append(e)
    assert set(got) == set(groups)
    for k, rows in groups.items():
        assert got[k]["events"] == len(rows)
        assert got[k]["category_coverage"] == sql_round(sum(r["category"] is not None for r in rows) / len(rows), 4)
        assert got[k]["popularity_coverage"] == sql_round(sum(r["popularity"] is not None for r in rows) / len(rows), 4)


def test_realtime_vs_offline(engine):
    got = {r["day"]: r for r in run(engine, "realtime_vs_offline", start_day=START - dt.timedelta(days=2),
                                    end_day=END)}
    raw = collections.defaultdict(set)
    for r in DATA["raw_events"]:
        raw[r["event_time"].date()].add(r["event_id"])
    copies = collections.Counter((e["event_time"].date(), e["event_id"]) for e in DATA["enriched_events"])
    enr = collections.defaultdict(set)
    for day, eid in copies:
        enr[day].add(eid)
    for day in set(raw) | set(enr):
        r = got[day]
        assert r["raw_events"] == len(raw[day])
        assert r["enriched_events"] == len(enr[day])
        assert r["missing_in_enriched"] == len(raw[day] - enr[day])
        assert r["not_in_raw"] == len(enr[day] - raw[day])
        assert r["duplicate_rows"] == sum(n - 1 for (d, _), n in copies.items() if d == day)
    assert sum(r["missing_in_enriched"] for r in got.values()) == 44  # e560..e599 and the funnel events


def test_dlq_reasons_over_time(engine):
    got = {(r["hour"], r["reason"]): r["records"] for r in run(engine, "dlq_reasons_over_time", hours=48)}
    want = collections.Counter((d["received_at"].replace(minute=0, second=0), d["reason"])
                               for d in DATA["dead_letters"] if d["received_at"] >= NOW - dt.timedelta(hours=48))
    assert got == dict(want)


def test_top_items_per_category(engine):
    got = [(r["category"], r["rank"], r["item_id"], r["engagements"]) for r in
           run(engine, "top_items_per_category", days=7, top=3)]
    cat = {f["item_id"]: f["category"] for f in DATA["item_features"] if f["updated_at"] > NOW - dt.timedelta(days=2)}
    eng = collections.defaultdict(set)
    for r in DATA["raw_events"]:
        if r["event_type"] in ("click", "repin", "closeup") and r["item_id"] in cat:
            eng[r["item_id"]].add(r["event_id"])
    want = []
    for c in sorted(set(cat.values())):
        items = sorted((i for i in eng if cat[i] == c), key=lambda i: (-len(eng[i]), i))[:3]
        want += [(c, k + 1, i, len(eng[i])) for k, i in enumerate(items)]
    assert got == want
    assert all(c != "c9" for c, *_ in got)  # the newest feature version wins


def test_end_to_end_lag(engine):
    got = run(engine, "end_to_end_lag", hours=24 * 4)
    lags = collections.defaultdict(list)
    for e in DATA["enriched_events"]:
        if e["enriched_by"] == "stream":
            lags[e["event_time"].replace(minute=0, second=0)].append(
                (e["indexed_at"] - e["event_time"]).total_seconds() * 1000)
    assert {r["hour"]: r["events"] for r in got} == {h: len(v) for h, v in lags.items()}
    for r in got:
        v = lags[r["hour"]]
        assert r["max_ms"] == max(v) and min(v) <= r["p50_ms"] <= r["p99_ms"] <= max(v)


def test_session_funnel(engine):
    got = {r["day"]: r for r in run(engine, "session_funnel", start_day=START - dt.timedelta(days=2), end_day=END,
                                    window_minutes=30)}
    raw = {r["event_id"]: r for r in DATA["raw_events"]}.values()
    closeups = [r for r in raw if r["event_type"] == "closeup"]
    repins = [r for r in raw if r["event_type"] == "repin"]
    per_day = collections.defaultdict(lambda: [0, 0])
    for c in closeups:
        hit = any(r["user_id"] == c["user_id"] and r["item_id"] == c["item_id"]
                  and c["event_time"] <= r["event_time"] <= c["event_time"] + dt.timedelta(minutes=30) for r in repins)
        per_day[c["event_time"].date()][0] += 1
        per_day[c["event_time"].date()][1] += hit
    assert {d: (r["closeups"], r["followed_by_repin"]) for d, r in got.items()} == \
        {d: tuple(v) for d, v in per_day.items()}


def test_every_library_query_is_covered_by_this_harness():
    tested = {n[len("test_"):] for n in globals() if n.startswith("test_")}
    assert set(LIB) <= tested


def test_merge_on_read_deletes_are_applied(engine, lake_settings):
    """Rows deleted by Spark as position-delete files (merge-on-read) are not counted."""
    _, deletes = lake_settings
    assert deletes >= 1  # really merge-on-read: delete files, not rewritten data files
    _, eng = engine
    got = eng.run("SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason").records()
    want = collections.Counter(d["reason"] for d in DATA["dead_letters"])
    assert {r["reason"]: r["n"] for r in got} == dict(want)


# Parameters that cover the whole fixture lake, per saved query.
WIDE = {"daily_active_users": {"start_day": START - dt.timedelta(days=2), "end_day": END},
        "event_mix_by_surface": {"start_day": START - dt.timedelta(days=2), "end_day": END},
        "enrichment_coverage": {"start_day": START - dt.timedelta(days=2), "end_day": END},
        "realtime_vs_offline": {"start_day": START - dt.timedelta(days=2), "end_day": END},
        "session_funnel": {"start_day": START - dt.timedelta(days=2), "end_day": END},
        "sequence_length_distribution": {"days": 30}, "dlq_reasons_over_time": {"hours": 48},
        "top_items_per_category": {"days": 7, "top": 3}, "end_to_end_lag": {"hours": 24 * 4}}
# Columns of approximate aggregates (approx_percentile): DuckDB and Trino use different sketches.
APPROXIMATE = {"p50", "p90", "p99", "p50_ms", "p90_ms", "p99_ms"}


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.mark.parametrize("name", sorted(LIB))
def test_both_engines_give_the_same_rows(name, embedded_engine, trino_engine):
    sql = LIB[name].render(WIDE.get(name, {}))
    a, b = embedded_engine.run(sql), trino_engine.run(sql)
    assert a.columns == b.columns
    assert a.rows, f"{name}: no rows over the fixture lake"
    assert len(a.rows) == len(b.rows)
    exact = [i for i, c in enumerate(a.columns) if c not in APPROXIMATE]
    key = lambda r: tuple(repr(r[i]) for i in exact)  # noqa: E731 (sorted: ties may come in any order)
    for ra, rb in zip(sorted(a.rows, key=key), sorted(b.rows, key=key)):
        for i, col in enumerate(a.columns):
            if col in APPROXIMATE:
                assert (ra[i] is None) == (rb[i] is None), (name, col, ra, rb)
            else:
                assert _same(ra[i], rb[i]), (name, col, ra, rb)


def test_every_table_of_the_catalog_is_queryable_on_both_engines(lake_settings, embedded_engine, trino_engine):
    """Every table iceberg_schemas defines, the erasure audit and the model outputs included, is
    a table on Trino and a view on the embedded engine, with its columns and its rows."""
    settings, _ = lake_settings
    catalog = lake.load_catalog(settings)
    defs = table_defs(load_registry())
    listed = sorted(ident[-1] for ident in catalog.list_tables(settings.lake_namespace))
    assert listed == sorted(defs) and {"deletions", "model_runs", "user_embeddings"} <= set(listed)
    served = catalog.load_table(lake.table_id(settings, lake.SERVED_FEATURES)).scan().to_arrow().num_rows
    rows = {t: len(DATA.get(t, [])) for t in listed} | {DELETIONS: 1, lake.SERVED_FEATURES: served}
    embedded_engine.refresh()  # a commit another test made since the engine started
    for eng in (embedded_engine, trino_engine):
        assert eng.run("SELECT 1").rows == [(1,)]
        for t in listed:
            assert eng.run(f"SELECT * FROM {t} LIMIT 0").columns == [c.name for c in defs[t].columns], (eng.name, t)
            assert eng.run(f"SELECT count(*) FROM {t}").rows == [(rows[t],)], (eng.name, t)
        got = eng.run("SELECT request_id, user_id_sha256, requested_by, reason, requested_at, completed_at, removed "
                      "FROM deletions").records()
        assert got == [{k: AUDIT[k] for k in ("request_id", "user_id_sha256", "requested_by", "reason",
                                              "requested_at", "completed_at", "removed")}], eng.name


def test_trino_sees_a_commit_made_after_it_started(trino_server, trino_engine):
    """A commit to the catalog (here pyiceberg's, as the Flink sink's) is in Trino's next query:
    no metadata cache to wait out."""
    settings = trino_server.settings
    catalog = lake.load_catalog(settings)
    ident = lake.table_id(settings, lake.SERVED_FEATURES)
    count = lambda: trino_engine.run("SELECT count(*) FROM served_features").rows[0][0]  # noqa: E731
    before = count()
    for n in (3, 5):
        rows = [{"request_id": f"r{n}-{k}", "tenant": "t", "config_version": 1, "served_at": NOW,
                 "user_id": f"u{k}", "format": "json", "features": "{}"} for k in range(n)]
        lake.append_rows(catalog, ident, rows)
        after = count()
        assert after == before + n
        before = after
    assert "served_features" not in "".join(q.sql for q in LIB.values())  # no saved query counts them


def _cli(settings, *args):
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "analytics", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=180)


def test_cli_says_which_engine_ran_and_draws_charts(lake_settings, tmp_path):
    settings = lake_settings[0].with_overrides(trino_port=free_port())  # no Trino there: embedded
    proc = _cli(settings, "run", "daily_active_users", "--param", f"start_day={START}", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["engine"].startswith("embedded DuckDB") and out["rows"] and "engine: embedded" in proc.stderr
    proc = _cli(settings, "sql", "SELECT count(*) AS n FROM raw_events", "--format", "csv")
    assert proc.stdout.splitlines() == ["n", str(len(DATA["raw_events"]))]
    bad = _cli(settings, "sql", "SELECT nope FROM raw_events")
    assert bad.returncode == 1 and "error" in bad.stderr and "Traceback" not in bad.stderr
    png = tmp_path / "dau.png"
    proc = _cli(settings, "chart", "daily_active_users", "--out", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_uses_the_local_trino_when_it_is_up(trino_server):
    settings = trino_server.settings  # trino_host unset: the CLI detects the server at host:trino_port
    assert not settings.trino_host
    proc = _cli(settings, "sql", "SELECT count(*) AS n FROM raw_events", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["engine"].startswith("Trino 476 at") and "engine: Trino" in proc.stderr
    assert out["rows"] == [{"n": len(DATA["raw_events"])}]
    bad = _cli(settings, "sql", "SELECT nope FROM raw_events")
    assert bad.returncode == 1 and "error (Trino" in bad.stderr and "Traceback" not in bad.stderr
