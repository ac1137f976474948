"""Browser test: log into the Airflow UI, backfill the bootstrap DAG through its form, see it succeed.

Real Airflow 3 standalone (scheduler, API server, DAG processor), headless Debian Chromium
driven by Playwright, real spark-submit tasks, a real lake and KV server.
"""
import datetime as dt
import json
import os
import urllib.request

import pytest

from infra.airflow import admin_password, start_standalone, stop_standalone
from infra.stack import free_port
from tests.integration.conftest import wait_until
from tests.integration.test_dag_run import lake_with_events  # noqa: F401  (fixture)
from usersignals.events import decode_stored
from usersignals.kv import SequenceStore, connect
from usersignals.registry import load_registry

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is installed by make install")]


def http_json(url, body=None, token=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def airflow(lake_with_events):  # noqa: F811
    settings = lake_with_events
    port = free_port()
    proc = start_standalone(settings, port, settings.data_dir / "airflow.log")
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return http_json(f"{base}/api/v2/monitor/health")["scheduler"]["status"] == "healthy"
        except Exception:
            return False

    try:
        wait_until(up, 180, 1.0, "Airflow standalone")
        yield settings, base, admin_password(settings)
    finally:
        stop_standalone(proc)


def test_backfill_bootstrap_from_the_ui(airflow, kv_client):
    from playwright.sync_api import sync_playwright

    settings, base, password = airflow
    today = dt.datetime.now(dt.timezone.utc).date()
    start, end = today - dt.timedelta(days=2), today - dt.timedelta(days=1)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/auth/login")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", password)
            page.locator("button[type=submit]").click()
            page.wait_for_url(f"{base}/", timeout=30_000)

            def dag_page_ready():  # the DAG processor parses the files shortly after start
                page.goto(f"{base}/dags/bootstrap_dataset", wait_until="networkidle")
                return page.get_by_role("button", name="Trigger Dag").count() > 0
            wait_until(dag_page_ready, 120, 2.0, "the bootstrap_dataset DAG page")

            page.get_by_role("button", name="Trigger Dag").click()
            dialog = page.locator("[role=dialog][aria-modal=true]")
            dialog.get_by_text("Backfill", exact=True).click()
            for picker, day in zip(dialog.locator("[data-testid=datetime-input]").all(), (start, end)):
                picker.click()
                pop = page.locator("[data-scope=popover][data-part=content][data-state=open]")
                pop.get_by_placeholder("YYYY/MM/DD").fill(day.strftime("%Y/%m/%d"))
                pop.get_by_placeholder("HH:mm").fill("00:00")
                dialog.get_by_text("Date Range").click()  # closes the picker
            days = dialog.locator("input[name=element_days]")
            days.click()
            days.press("Control+a")
            days.type("2")
            days.press("Tab")
            dialog.get_by_text("Override parameters on existing runs").click()
            page.screenshot(path=str(settings.data_dir / "backfill-form.png"), full_page=True)
            token = http_json(f"{base}/auth/token", {"username": "admin", "password": password})["access_token"]

            def backfill_runs():
                runs = http_json(f"{base}/api/v2/dags/bootstrap_dataset/dagRuns?limit=50", token=token)["dag_runs"]
                return [r for r in runs if r["run_type"] == "backfill"]

            dialog.get_by_role("button", name="Run Backfill").click()
            runs = wait_until(lambda: backfill_runs() or None, 30, 1.0, "backfill runs created by the form")
        finally:
            browser.close()
    backfills = http_json(f"{base}/api/v2/backfills?dag_id=bootstrap_dataset", token=token)["backfills"]
    assert all(r["conf"].get("days") == 2 for r in runs), json.dumps(backfills)

    def finished():
        runs = backfill_runs()
        return runs if runs and all(r["state"] in ("success", "failed") for r in runs) else None

    runs = wait_until(finished, 420, 3.0, "backfill runs to finish")
    assert [r["state"] for r in runs] == ["success"] * len(runs), runs
    assert {r["logical_date"][:10] for r in runs} >= {start.isoformat()}

    store = SequenceStore(connect(settings.kv_url), load_registry(), settings.kv_prefix)
    ids = [decode_stored(x)["event_id"] for x in store.read("u0", {"clicks": 100})["clicks"]]
    assert ids and len(ids) == len(set(ids))
