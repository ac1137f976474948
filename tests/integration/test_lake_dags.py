"""The erasure and maintenance DAGs run by real Airflow (``dag.test``, real spark-submit) on a real
lake and KV: user_erasure completes a request the API recorded; lake_maintenance drops an expired
partition and its task returns what it dropped (XCom return_value)."""
import datetime as dt
import json
import os
import subprocess
import uuid

import pytest

from iceberg_schemas.migrate import migrate
from infra.airflow import AIRFLOW_PYTHON, airflow_env
from tests.integration.test_dag_run import append, run_dag
from usersignals import lake
from usersignals.kv import ErasureRequests, connect
from usersignals.registry import load_registry
from usersignals.settings import REPO_ROOT

pytestmark = pytest.mark.integration

RETURN_VALUE = """
import json
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
with create_session() as s:
    row = s.query(XComModel).filter_by(dag_id={dag_id!r}, task_id={task_id!r}, key="return_value") \\
        .order_by(XComModel.timestamp.desc()).first()
    print("RETURN_VALUE", row.value if isinstance(row.value, str) else json.dumps(row.value))
"""


@pytest.fixture(scope="module")
def settings(tmp_path_factory, kv_server, postgres_server, new_lake):
    from infra import postgres

    db = f"airflow_{uuid.uuid4().hex[:8]}"
    postgres.create_database(postgres_server.settings, db)
    s = new_lake(tmp_path_factory.mktemp("lakedags"), kv_port=kv_server.settings.kv_port,
                 airflow_db_url=postgres.url(postgres_server.settings, db))
    migrate(lake.load_catalog(s), s, load_registry())
    return s


def event(user, n, at):
    return {"event_id": f"{user}-{n}", "user_id": user, "event_type": "click", "item_id": "i1", "event_time": at,
            "surface": None, "dwell_ms": None, "query": None, "kafka_partition": 0, "kafka_offset": n,
            "ingested_at": at}


def test_user_erasure_completes_the_apis_request_and_maintenance_returns_what_it_dropped(settings, kv_client):
    now = dt.datetime.now(dt.timezone.utc)
    old = now - dt.timedelta(days=500)
    append(settings, lake.RAW_EVENTS, [event("gone", 0, now - dt.timedelta(hours=1)),
                                       event("kept", 1, now - dt.timedelta(hours=1)), event("kept", 2, old)])
    requests = ErasureRequests(settings.kv_prefix)
    requests.record(connect(settings.kv_url), "gone", {
        "request_id": "req-1", "requested_by": "ticket-1", "requested_at": now.isoformat(),
        "kv_deleted_at": now.isoformat(), "kv_removed": {"kv.clicks": 1}})

    proc = run_dag(settings, "user_erasure", {})
    assert "DAG_RUN_STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert requests.pending(kv_client) == {}
    users = sorted(r["user_id"] for r in lake.load_catalog(settings).load_table(
        lake.table_id(settings, lake.RAW_EVENTS)).scan().to_arrow().to_pylist())
    assert users == ["kept", "kept"]

    proc = run_dag(settings, "lake_maintenance", {"expire_days": 5})
    assert "DAG_RUN_STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    env = {**os.environ, **airflow_env(settings)}
    out = subprocess.run([str(AIRFLOW_PYTHON), "-c", RETURN_VALUE.format(dag_id="lake_maintenance", task_id="maintain")],
                         env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert "RETURN_VALUE" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    returned = json.loads(out.stdout.split("RETURN_VALUE", 1)[1].strip())
    assert returned[lake.RAW_EVENTS] == {"rows": 1, "files": 1}
    assert returned[lake.DEAD_LETTERS] == {"rows": 0, "files": 0}
    # Read back from what the job left in the lake (the table's properties), not from the driver's
    # files: in cluster mode the driver is not on this worker.
    props = lake.load_catalog(settings).load_table(lake.table_id(settings, lake.RAW_EVENTS)).properties
    assert (props["usersignals.maintenance.expired-rows"], props["usersignals.maintenance.expired-files"]) == ("1", "1")
    ids = [r["event_id"] for r in lake.load_catalog(settings).load_table(
        lake.table_id(settings, lake.RAW_EVENTS)).scan().to_arrow().to_pylist()]
    assert ids == ["kept-1"]
