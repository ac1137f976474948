"""make bench-serving's floor as the bench runs it: python -m bench.floor_api with two uvicorn
workers answers every connection with the asked body size (the size reaches the workers), and
floor_run measures it at a rate and saturated, then leaves no process behind."""
import argparse
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from bench.common import group_pids
from bench.serving import floor_run
from infra.stack.probes import free_port, port_open
from usersignals.settings import REPO_ROOT

from .conftest import wait_until

pytestmark = pytest.mark.integration

REQUEST = (b"POST /v1/features HTTP/1.1\r\nHost: floor\r\nContent-Type: application/json\r\n"
           b"Content-Length: 2\r\n\r\n{}")


def test_every_worker_answers_with_the_asked_size():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.floor_api", "--port", str(port), "--workers", "2",
                             "--bytes", "5000"], cwd=REPO_ROOT, start_new_session=True)
    try:
        wait_until(lambda: port_open("127.0.0.1", port), timeout=30)
        wait_until(lambda: len(group_pids(proc.pid)) >= 3, timeout=30)  # the supervisor and 2 workers
        for _ in range(8):  # a new connection each, spread over the workers by the kernel
            r = httpx.post(f"http://127.0.0.1:{port}/anything", content=b"{}",
                           headers={"Connection": "close"}, timeout=10)
            assert (r.status_code, len(r.content), r.headers["content-length"]) == (200, 5000, "5000")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0


def test_floor_run_measures_at_a_rate_and_saturated_and_stops_its_server():
    before = set(_floor_pids())
    args = argparse.Namespace(rate=200.0, seconds=1.0, sat_seconds=1.0)
    floor = floor_run(2, 2000, REQUEST, args)
    assert floor["errors"] == 0, floor
    assert floor["cpu_ms"] > 0 and floor["sat_cpu_ms"] > 0 and floor["sat_rps"] > 100, floor
    assert 0 < floor["p99_ms"] < 1000, floor
    time.sleep(0.5)
    assert set(_floor_pids()) - before == set()


def _floor_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "bench.floor_api"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]
