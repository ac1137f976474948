"""End to end: a DAG run with ``dag.test()`` (real Airflow, real spark-submit) on a real lake and KV."""
import ast
import datetime as dt
import math
import os
import re
import subprocess
import uuid

import orjson

import pytest

from iceberg_schemas.migrate import migrate
from infra.airflow import AIRFLOW, AIRFLOW_PYTHON, airflow_env
from usersignals import lake
from usersignals.events import decode_stored
from usersignals.kv import SequenceStore, StoredEvent, connect
from usersignals.registry import load_registry
from usersignals.settings import REPO_ROOT

pytestmark = pytest.mark.integration

RUN_DAG = """
import sys
sys.path.insert(0, {dags!r})
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={dags!r})
assert not bag.import_errors, bag.import_errors
dr = bag.dags[{dag_id!r}].test(run_conf={conf!r})
print("DAG_RUN_STATE", dr.state)
"""


def append(settings, table, rows):
    lake.append_rows(lake.load_catalog(settings), lake.table_id(settings, table), rows)


@pytest.fixture(scope="module")
def lake_with_events(tmp_path_factory, kv_server, postgres_server, new_lake):
    from infra import postgres

    db = f"airflow_{uuid.uuid4().hex[:8]}"  # a metadata database of this module's own
    postgres.create_database(postgres_server.settings, db)
    settings = new_lake(tmp_path_factory.mktemp("dagrun"), kv_port=kv_server.settings.kv_port,
                        airflow_db_url=postgres.url(postgres_server.settings, db))
    registry = load_registry()
    migrate(lake.load_catalog(settings), settings, registry)
    now = dt.datetime.now(dt.timezone.utc)
    append(settings, lake.ITEM_FEATURES, [
        {"item_id": f"i{k}", "category": f"c{k}", "popularity": k / 10, "embedding": [1.0, 0.0],
         "updated_at": now} for k in range(5)])
    rows = []
    for u in range(3):
        for i in range(30):  # 30 clicks per user over ~2.5 days; clicks keep 100
            t = now - dt.timedelta(hours=2 * i + 1)
            rows.append({"event_id": f"u{u}-{i}", "user_id": f"u{u}", "event_type": "click", "item_id": f"i{i % 5}",
                         "event_time": t, "surface": "homefeed", "dwell_ms": i, "query": None,
                         "kafka_partition": 0, "kafka_offset": i, "ingested_at": t})
    rows.append(dict(rows[0], kafka_offset=999))  # a duplicate from a replay
    append(settings, lake.RAW_EVENTS, rows)
    return settings


def run_dag(settings, dag_id, conf, timeout=600):
    env = {**os.environ, **airflow_env(settings)}
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    script = RUN_DAG.format(dags=str(REPO_ROOT / "dags"), dag_id=dag_id, conf=conf)
    proc = subprocess.run([str(AIRFLOW_PYTHON), "-c", script], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT)
    return proc


def test_bootstrap_dag_loads_the_kv_layer_from_the_lake(lake_with_events, kv_client):
    settings = lake_with_events
    proc = run_dag(settings, "bootstrap_dataset", {"datasets": ["clicks"], "days": 2})
    assert "DAG_RUN_STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    store = SequenceStore(connect(settings.kv_url), load_registry(), settings.kv_prefix)
    for u in range(3):
        ids = [decode_stored(x)["event_id"] for x in store.read(f"u{u}", {"clicks": 100})["clicks"]]
        # 2 days back from the run's data interval end (the run's logical time, about now)
        assert ids[:3] == [f"u{u}-0", f"u{u}-1", f"u{u}-2"]
        assert len(ids) == len(set(ids)) and 20 <= len(ids) <= 25
    assert (settings.data_dir / "metrics" / "batch_bootstrap.prom").exists()


def test_an_asset_scheduled_dag_run_passes_its_moment_to_the_job(lake_with_events):
    """parity_check is scheduled on an asset: real Airflow renders its --as-of (the data interval's
    end, or run_after for a run without one) and the job compares as of it minus the watermark."""
    settings = lake_with_events
    before = dt.datetime.now(dt.timezone.utc)
    proc = run_dag(settings, "parity_check", {"sample": 10, "threshold": 1.0, "watermark_minutes": 10})
    out = proc.stdout + proc.stderr
    assert "DAG_RUN_STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    watermark = dt.datetime.fromisoformat(out.split("parity: started ")[1].split("watermark=")[1].split()[0])
    # As of the run's moment (rendered when the run was created, about now) minus 10 minutes.
    assert dt.timedelta(minutes=9) < before - watermark < dt.timedelta(minutes=15), watermark
    assert (settings.data_dir / "metrics" / "batch_parity.prom").exists()


def test_the_selection_experiment_dag_compares_its_rules_into_the_report_and_a_chart(lake_with_events):
    """cleanup >> select through real Airflow: the rules chosen in the trigger form are scored
    on the last complete day (the clicks of the two days before it are what they select from).

    Recall@5, by hand: each fixture user's 5 newest clicks, and their 5 longest dwells (dwell_ms
    is i, older is longer), are 5 consecutive i, so items i0..i4, all of which they click on the
    scored day: 1 for both rules. User "us" clicks x1..x5 in the window's last 5 hours (no
    dwell) and x6 10 hours before its end (dwell 9000), then x6 and x1 on the scored day: the
    newest 5 hold x1 (recall 1/2), the longest dwells x6, x1 (2/2)."""
    settings = lake_with_events
    # The rules select from what the stream indexed: its enriched rows of the fixture's clicks.
    raw = lake.load_catalog(settings).load_table(lake.table_id(settings, lake.RAW_EVENTS)).scan().to_arrow()
    indexed = {r["event_id"]: {**r, "dataset": "clicks", "indexed_at": r["ingested_at"], "enriched_by": "stream"}
               for r in raw.to_pylist()}
    scored = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date()
    end = dt.datetime.combine(scored, dt.time(), dt.timezone.utc)  # the window's end: the scored day's start
    us = [(f"w{h}", f"x{h}", end - dt.timedelta(hours=h), 0) for h in range(1, 6)] + \
        [("w6", "x6", end - dt.timedelta(hours=10), 9000),
         ("s1", "x6", end + dt.timedelta(hours=1), 0), ("s2", "x1", end + dt.timedelta(hours=2), 0)]
    clicks = [{"event_id": f"us-{n}", "user_id": "us", "event_type": "click", "item_id": item, "event_time": t,
               "surface": "homefeed", "dwell_ms": dwell, "query": None, "dataset": "clicks", "indexed_at": t,
               "enriched_by": "stream"} for n, item, t, dwell in us]
    append(settings, lake.ENRICHED_EVENTS, list(indexed.values()) + clicks)
    days = {scored.isoformat()}
    proc = run_dag(settings, "selection_experiment",
                   {"experiment": "dag_run", "dataset": "clicks", "rules": ["dwell"], "n": 5, "days": 2})
    assert "DAG_RUN_STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    table = lake.load_catalog(settings).load_table(lake.table_id(settings, lake.SELECTION_REPORTS))
    rows = {r["rule"]: r for r in table.scan().to_arrow().to_pylist() if r["experiment"] == "dag_run"}
    assert set(rows) == {"last", "dwell"}  # the baseline, always
    days.add((dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat())  # run over midnight
    eval_day = rows["last"]["eval_day"]
    assert eval_day in days
    if eval_day == scored.isoformat():
        users, recall, ndcg_us_last = 4, {"last": (3 + 1 / 2) / 4, "dwell": 1.0}, 1 / (1 + 1 / math.log2(3))
        ndcg = {"last": (3 + ndcg_us_last) / 4, "dwell": 1.0}
    else:  # the run started after midnight: a day later, "us" has no click on the scored day
        users, recall, ndcg = 3, {"last": 1.0, "dwell": 1.0}, {"last": 1.0, "dwell": 1.0}
    for rule, r in rows.items():
        assert (r["dataset"], r["k"], r["users_evaluated"], r["eval_day"]) == ("clicks", 5, users, eval_day)
        assert (r["recall_at_k"], r["ndcg_at_k"]) == (recall[rule], pytest.approx(ndcg[rule], abs=1e-12)), rule
    assert (settings.data_dir / "reports" / "selection" / "dag_run" / f"{eval_day}.svg").exists()


def item_truth(item_id: str) -> dict:
    """The features the fixture gives item i<k>: what any enrichment of it must store."""
    k = int(item_id[1:])
    return {"category": f"c{k}", "popularity": k / 10}


def test_the_daily_reenrichment_dag_rewrites_its_day_and_repairs_the_kv_layer(lake_with_events, kv_client):
    """reenrich >> skew through real Airflow, for the last UTC day complete when the run starts
    (a manual run's data interval is the last whole day). Planted on that day for a user of this
    test: 3 clicks the stream missed (lake only), 2 it enriched with a stale category (lake and KV), 1 it enriched
    right. The day's enriched_events become the day's deduplicated raw clicks enriched with the
    current features, each once, and the KV layer gets every missed or mis-enriched event (the
    stale ones fixed in place); other days are left alone. A day nobody was served still runs
    the skew task, which writes its (empty) gauges file for the type."""
    settings = lake_with_events
    catalog = lake.load_catalog(settings)
    store = SequenceStore(connect(settings.kv_url), load_registry(), settings.kv_prefix)
    user = f"ud-{uuid.uuid4().hex[:8]}"
    today = dt.datetime.now(dt.timezone.utc).date()
    raw, streamed, in_kv, right = [], [], [], set()
    for day in (today - dt.timedelta(days=1), today):  # today: the run's day if it starts after midnight
        for k, (item, stream) in enumerate([("i0", None), ("i1", None), ("i2", None),
                                            ("i3", "stale"), ("i4", "stale"), ("i1", "right")]):
            t = dt.datetime.combine(day, dt.time(0, 30 + k), dt.timezone.utc)
            row = {"event_id": f"{user}-{day}-{k}", "user_id": user, "event_type": "click", "item_id": item,
                   "event_time": t, "surface": "homefeed", "dwell_ms": 100, "query": None, "kafka_partition": 0,
                   "kafka_offset": k, "ingested_at": t}
            raw.append(row)
            if stream is None:
                continue
            features = item_truth(item) if stream == "right" else dict(item_truth(item), category="stale")
            if stream == "right":
                right.add(row["event_id"])
            streamed.append(row | features | {"dataset": "clicks", "indexed_at": t, "enriched_by": "stream"})
            payload = {"event_id": row["event_id"], "item_id": item, "ts": int(t.timestamp() * 1000),
                       "surface": "homefeed", "dwell_ms": 100, "features": features}
            in_kv.append(StoredEvent("clicks", user, row["event_id"], payload["ts"], orjson.dumps(payload)))
    append(settings, lake.RAW_EVENTS, raw)
    append(settings, lake.ENRICHED_EVENTS, streamed)
    store.write(in_kv)
    scan = lambda t: catalog.load_table(lake.table_id(settings, t)).scan().to_arrow().to_pylist()  # noqa: E731
    raw_clicks = {r["event_id"]: r for r in scan(lake.RAW_EVENTS) if r["event_type"] == "click"}  # deduplicated
    before = scan(lake.ENRICHED_EVENTS)

    proc = run_dag(settings, "daily_enrichment_click", {})
    assert "DAG_RUN_STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout + proc.stderr
    run_day = dt.date.fromisoformat(re.search(r"daily_reenrich: started day=(\S+)", out).group(1))
    assert run_day in (today - dt.timedelta(days=1), today)
    figures = ast.literal_eval(re.search(r"daily_reenrich: done in \S+ (\{.*\})", out).group(1))

    on_day = {e for e, r in raw_clicks.items() if r["event_time"].date() == run_day}
    assert {f"{user}-{run_day}-{k}" for k in range(6)} <= on_day
    after = scan(lake.ENRICHED_EVENTS)
    daily = [r for r in after if r["event_time"].date() == run_day]
    assert sorted(r["event_id"] for r in daily) == sorted(on_day)          # each of the day's clicks, once
    assert {r["enriched_by"] for r in daily} == {"daily"}
    assert [r["event_id"] for r in daily if {f: r[f] for f in ("category", "popularity")}
            != item_truth(r["item_id"])] == []
    other = lambda rows: sorted(((r["event_id"], r["enriched_by"], r["category"]) for r in rows  # noqa: E731
                                 if r["event_time"].date() != run_day), key=repr)
    assert other(after) == other(before)                                   # other days untouched

    was = {r["event_id"]: {f: r[f] for f in ("category", "popularity")} for r in before
           if r["event_time"].date() == run_day}
    missing = on_day - set(was)
    mis_enriched = {e for e in on_day & set(was) if was[e] != item_truth(raw_clicks[e]["item_id"])}
    assert {f"{user}-{run_day}-{k}" for k in range(3)} <= missing
    assert {f"{user}-{run_day}-{k}" for k in (3, 4)} <= mis_enriched and right.isdisjoint(mis_enriched)
    assert {k: figures[k] for k in ("recomputed", "missing", "mis_enriched", "kv_repaired")} == {
        "recomputed": len(on_day), "missing": len(missing), "mis_enriched": len(mis_enriched),
        "kv_repaired": len(missing) + len(mis_enriched)}

    # The KV layer: every event of the day with the current features (the stale ones rewritten);
    # the other day's planted events as they were.
    def kv_events(u):
        return {e["event_id"]: e["features"] for e in map(decode_stored, store.read(u, {"clicks": 100})["clicks"])}

    other_day = {e.event_id: orjson.loads(e.payload)["features"] for e in in_kv if str(run_day) not in e.event_id}
    assert kv_events(user) == {e: item_truth(raw_clicks[e]["item_id"]) for e in on_day if e.startswith(user)} \
        | other_day
    for u in ("u0", "u1", "u2"):  # kv_client emptied the store: all there is, the repair wrote
        assert kv_events(u) == {e: item_truth(raw_clicks[e]["item_id"]) for e in missing | mis_enriched
                                if raw_clicks[e]["user_id"] == u}
    assert "skew" in out
    assert (settings.data_dir / "metrics" / "batch_feature_skew_click.prom").exists()
