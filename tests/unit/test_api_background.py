"""The API's background loops: a stored tenant record is read or refused with the reason, a loop
outlives any error and counts it, and the alert on that count fires on a lasting fault only."""
import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry, Counter

from serving.background import TENANT_SYNC, LoopErrors, every
from serving.tenants import CorruptRecord, read_record
from tests.unit.test_observability_config import PROMTOOL, promtool_test


def test_a_stored_record_is_read_as_version_time_and_config():
    assert read_record(b'{"version": 3, "updated_at": 12.5, "config": {"sequences": {"clicks": 5}}}') == (
        3, 12.5, {"sequences": {"clicks": 5}})
    assert read_record(b'{"version": 1, "config": {}}') == (1, 0.0, {})


@pytest.mark.parametrize("raw,reason", [
    (b"not json{", "not JSON"),
    (b"[1, 2]", "expected an object with version and config, got list"),
    (b'{"config": {}}', "version must be an integer >= 1, got None"),
    (b'{"version": "2", "config": {}}', "version must be an integer >= 1, got '2'"),
    (b'{"version": true, "config": {}}', "version must be an integer >= 1, got True"),
    (b'{"version": 0, "config": {}}', "version must be an integer >= 1, got 0"),
    (b'{"version": 2}', "config must be an object, got NoneType"),
    (b'{"version": 2, "config": {}, "updated_at": "now"}', "updated_at must be epoch seconds, got 'now'"),
])
def test_a_corrupt_record_is_refused_with_what_is_wrong(raw, reason):
    with pytest.raises(CorruptRecord, match="^" + reason.replace("(", r"\(").replace("[", r"\[")):
        read_record(raw)


def test_a_loop_outlives_its_errors_counts_each_and_logs_a_repeat_once(caplog):
    counter = Counter("errors_total", "test", ["loop"], registry=CollectorRegistry())
    errors = LoopErrors(counter)
    passes = []

    async def step():
        passes.append(1)
        if len(passes) <= 3:
            raise ConnectionError("KV connection lost: closed by the server")

    async def run():
        task = asyncio.create_task(every(0.001, TENANT_SYNC, step, errors))
        while len(passes) < 5:
            await asyncio.sleep(0.001)
        task.cancel()

    with caplog.at_level(logging.ERROR, logger="serving.background"):
        asyncio.run(run())
    assert counter.labels(TENANT_SYNC)._value.get() == 3
    assert [r.getMessage() for r in caplog.records] == [
        "background loop tenant_sync: ConnectionError: KV connection lost: closed by the server"]
    assert caplog.records[0].exc_info is not None  # with its traceback


# Two API workers, each counting one error a pass of a loop that runs every second.
def errors_series(loop: str, per_minute: str) -> list[dict]:
    return [{"series": f'usersignals_api_background_errors_total{{loop="{loop}",pid="{pid}"}}', "values": per_minute}
            for pid in (1, 2)]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus (make install)")
def test_a_lasting_loop_failure_raises_a_ticket_and_a_start_up_burst_does_not(tmp_path):
    series = [*errors_series("tenant_sync", "0+60x30"),   # a corrupt record, skipped every pass
              *errors_series("startup", "0 4x30")]         # the KV store late at start: 4 errors a worker, once
    fired = {"exp_labels": {"severity": "ticket", "loop": "tenant_sync"},
             "exp_annotations": {"summary": "The API's tenant_sync loop fails 2 times a second (its log says why)."}}
    out = promtool_test(tmp_path, [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "UsersignalsApiBackgroundLoopFailing", "exp_alerts": []},  # pending
            {"eval_time": "12m", "alertname": "UsersignalsApiBackgroundLoopFailing", "exp_alerts": [fired]},
        ],
    }])
    assert out.returncode == 0, out.stdout + out.stderr
