"""Helpers shared by the benchmarks: a private stack on free ports, metrics, percentiles."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from infra.stack import metric_total, private_settings
from usersignals.settings import Settings

__all__ = ["bench_settings", "emit", "group_pids", "group_rss_mb", "log", "metric_total", "percentile", "rss_mb"]


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


def rss_mb(pid: int) -> float:
    """Resident memory of one process, MB (nan if /proc has no figure)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def group_pids(pgid: int) -> list[int]:
    """The processes of a process group (a stack component and its children: the job's JVM, workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except ProcessLookupError:
                continue
    return pids


def group_rss_mb(pgid: int) -> float:
    """Resident memory of a whole process group, MB; processes that exit meanwhile count 0."""
    total = 0.0
    for pid in group_pids(pgid):
        try:
            total += rss_mb(pid)
        except OSError:
            continue
    return round(total, 1)
