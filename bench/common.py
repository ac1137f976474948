"""Helpers shared by the benchmarks: a private stack on free ports, metrics, percentiles."""
from __future__ import annotations

import json
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path

from usersignals.settings import Settings, load_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_settings(name: str, **over) -> Settings:
    """Settings for a private stack: free ports and a fresh data dir, so a running
    `make up` stack is left alone."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"usersignals-{name}-"))
    return load_settings().with_overrides(
        broker_port=free_port(), kv_port=free_port(), api_port=free_port(), job_metrics_port=free_port(),
        data_dir=data_dir, **over)


def scrape(port: int, name: str) -> float | None:
    """Sum of a metric's samples (all label sets) on a Prometheus endpoint; None if unreachable."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    """The last line of every benchmark: one JSON object (a public contract)."""
    print(json.dumps(result), flush=True)
