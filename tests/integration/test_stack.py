"""The local stack's own behaviour: the background trimmer process and restarts of dead parts."""
import os
import signal

import orjson
import pytest

from infra.stack import Stack, free_port, private_settings
from usersignals.kv import SequenceStore, StoredEvent, connect

from .conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def kv_and_trimmer(tmp_path, monkeypatch):
    monkeypatch.setenv("USERSIGNALS_TRIMMER_METRICS_PORT", str(free_port()))
    monkeypatch.setenv("USERSIGNALS_TRIM_INTERVAL_S", "0.2")
    stack = Stack(private_settings(tmp_path), components=("kv", "trimmer"))
    stack.start()
    yield stack
    stack.stop()


def test_the_trimmer_process_cuts_sequences_back_to_retention_in_the_background(kv_and_trimmer, registry):
    s = kv_and_trimmer.settings
    store = SequenceStore(connect(s.kv_url), registry, s.kv_prefix)
    n = registry.datasets["repins"].retention
    store.write([StoredEvent("repins", "u1", f"e{i}", i, orjson.dumps({"event_id": f"e{i}", "ts": i}))
                 for i in range(5 * n)])
    wait_until(lambda: store.length("repins", "u1") == n, timeout=15, message="trimmed to N")


def test_a_dead_component_is_restarted_by_the_supervisor(kv_and_trimmer):
    trimmer = kv_and_trimmer.component("trimmer")
    old_pid = trimmer.proc.pid
    os.killpg(old_pid, signal.SIGKILL)
    trimmer.proc.wait()

    def restarted():
        kv_and_trimmer.watch_once()
        return trimmer.proc.pid != old_pid and trimmer.proc.poll() is None and trimmer.ready()

    wait_until(restarted, timeout=20, message="trimmer restarted")
    assert trimmer.restarts == 1


def test_a_busy_port_is_a_clear_error(tmp_path, kv_and_trimmer):
    clash = kv_and_trimmer.settings.with_overrides(data_dir=tmp_path / "other")
    with pytest.raises(SystemExit, match="already in use"):
        Stack(clash, components=("kv",)).start()
