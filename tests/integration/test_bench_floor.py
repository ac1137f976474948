"""make bench-serving's floor as the bench runs it: bench.floor_api with two uvicorn workers,
supervised (FloorServer), answers every connection with the asked body size (the size reaches
the workers) and stops cleanly; floor_run measures it at a rate and saturated, then leaves no
process behind."""
import argparse
import subprocess
import time

import httpx
import pytest

from bench.common import group_pids
from bench.serving import FloorServer, floor_run
from infra.stack import private_settings

from .conftest import wait_until

pytestmark = pytest.mark.integration

REQUEST = (b"POST /v1/features HTTP/1.1\r\nHost: floor\r\nContent-Type: application/json\r\n"
           b"Content-Length: 2\r\n\r\n{}")


def test_every_worker_answers_with_the_asked_size(tmp_path):
    settings = private_settings(tmp_path, api_workers=2)
    server = FloorServer(settings, 5000)
    server.start()
    proc = server.component("floor").proc
    try:
        wait_until(lambda: len(group_pids(proc.pid)) >= 3, timeout=30)  # the supervisor and 2 workers
        for _ in range(8):  # a new connection each, spread over the workers by the kernel
            r = httpx.post(f"http://{settings.host}:{server.port}/anything", content=b"{}",
                           headers={"Connection": "close"}, timeout=10)
            assert (r.status_code, len(r.content), r.headers["content-length"]) == (200, 5000, "5000")
    finally:
        server.stop()
    assert proc.returncode == 0  # uvicorn took the SIGTERM: its workers stopped and it exited cleanly


def test_floor_run_measures_at_a_rate_and_saturated_and_stops_its_server(tmp_path):
    before = set(_floor_pids())
    args = argparse.Namespace(rate=200.0, seconds=1.0, sat_seconds=1.0)
    floor = floor_run(private_settings(tmp_path, api_workers=2), 2000, REQUEST, args)
    assert floor["errors"] == 0, floor
    assert floor["cpu_ms"] > 0 and floor["sat_cpu_ms"] > 0 and floor["sat_rps"] > 100, floor
    assert 0 < floor["p99_ms"] < 1000, floor
    time.sleep(0.5)
    assert set(_floor_pids()) - before == set()


def _floor_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "bench.floor_api"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]
