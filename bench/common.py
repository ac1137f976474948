"""Helpers shared by the benchmarks: a private stack on free ports, metrics, percentiles."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from infra.stack import metric_total, private_settings
from usersignals.settings import Settings

__all__ = ["bench_settings", "emit", "log", "metric_total", "percentile"]


def bench_settings(name: str, **over) -> Settings:
    """Settings for a benchmark's private stack, in a fresh temporary data dir."""
    return private_settings(Path(tempfile.mkdtemp(prefix=f"usersignals-{name}-")), **over)


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
