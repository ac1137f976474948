"""End to end: a DAG run with ``dag.test()`` (real Airflow, real spark-submit) on a real lake and KV."""
import datetime as dt
import os
import subprocess
import uuid

import pytest

from iceberg_schemas.migrate import migrate
from infra.airflow import AIRFLOW, AIRFLOW_PYTHON, airflow_env
from usersignals import lake
from usersignals.events import decode_stored
from usersignals.kv import SequenceStore, connect
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
    on the last complete day (the clicks of the two days before it are what they select from)."""
    settings = lake_with_events
    # The rules select from what the stream indexed: its enriched rows of the fixture's clicks.
    raw = lake.load_catalog(settings).load_table(lake.table_id(settings, lake.RAW_EVENTS)).scan().to_arrow()
    indexed = {r["event_id"]: {**r, "dataset": "clicks", "indexed_at": r["ingested_at"], "enriched_by": "stream"}
               for r in raw.to_pylist()}
    append(settings, lake.ENRICHED_EVENTS, list(indexed.values()))
    days = {(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()}
    proc = run_dag(settings, "selection_experiment",
                   {"experiment": "dag_run", "dataset": "clicks", "rules": ["dwell"], "n": 5, "days": 2})
    assert "DAG_RUN_STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    table = lake.load_catalog(settings).load_table(lake.table_id(settings, lake.SELECTION_REPORTS))
    rows = {r["rule"]: r for r in table.scan().to_arrow().to_pylist() if r["experiment"] == "dag_run"}
    assert set(rows) == {"last", "dwell"}  # the baseline, always
    days.add((dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat())  # run over midnight
    eval_day = rows["last"]["eval_day"]
    assert eval_day in days
    for r in rows.values():
        assert (r["dataset"], r["k"], r["users_evaluated"], r["eval_day"]) == ("clicks", 5, 3, eval_day)
        assert 0.0 < r["recall_at_k"] <= 1.0
    assert (settings.data_dir / "reports" / "selection" / "dag_run" / f"{eval_day}.svg").exists()


def test_the_daily_reenrichment_dag_measures_its_types_feature_skew_after_it(lake_with_events):
    """reenrich >> skew through real Airflow: a day nobody was served still runs the skew task,
    which writes its (empty) gauges file for the type."""
    settings = lake_with_events
    proc = run_dag(settings, "daily_enrichment_click", {})
    assert "DAG_RUN_STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout + proc.stderr
    assert "reenrich" in out and "skew" in out
    assert (settings.data_dir / "metrics" / "batch_feature_skew_click.prom").exists()
