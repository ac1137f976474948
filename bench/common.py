"""Helpers shared by the benchmarks: a private stack on free ports, metrics, percentiles,
an open-loop HTTP client."""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import orjson

from infra.stack import metric_total, private_settings
from usersignals.settings import REPO_ROOT, Settings

__all__ = ["bench_settings", "closed_loop", "cpu_reference", "cpu_s", "emit", "group_cpu_s", "group_pids",
           "group_max_rss_mb", "group_rss_mb", "log", "metric_total", "open_loop", "percentile", "rss_mb", "run_on_a_lake"]

_LENGTH = re.compile(rb"content-length: *(\d+)", re.I)
_BROKEN = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)  # a connection to reopen


def bench_settings(name: str, **over) -> Settings:
    """Settings for a benchmark's private stack, in a fresh temporary data dir."""
    return private_settings(Path(tempfile.mkdtemp(prefix=f"usersignals-{name}-")), **over)


def run_on_a_lake(name: str, run) -> int:
    """``run(settings)`` with INFO logs, on a fresh private lake whose catalog (PostgreSQL) is
    started for it and stopped after: the Spark benchmarks' set-up."""
    import logging

    from infra.stack import Stack

    logging.basicConfig(level=logging.INFO, format="[bench] %(name)s: %(message)s")
    settings = bench_settings(name)
    database = Stack(settings, components=("postgres",))  # the lake's catalog
    database.start()
    try:
        return run(settings)
    finally:
        database.stop()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


RESULTS_DIR = Path(__file__).resolve().parent / "results"


def emit(result: dict, record: bool = True) -> None:
    """The last line of every benchmark: one JSON object (a public contract). A figure that
    could not be measured (NaN, e.g. the p99 of a minute without answers) is null: strict JSON
    parsers refuse NaN. With ``record``, the run is also appended to
    ``bench/results/<bench>.jsonl`` with its date, commit and machine, for the docs to cite."""
    clean = _nan_to_null(result)
    if record and os.environ.get("USERSIGNALS_BENCH_RECORD", "1") != "0":
        RESULTS_DIR.mkdir(exist_ok=True)
        with open(RESULTS_DIR / f"{clean['bench']}.jsonl", "a") as f:
            f.write(json.dumps({"run": run_context(), "result": clean}, allow_nan=False) + "\n")
    print(json.dumps(clean, allow_nan=False), flush=True)


def run_context() -> dict:
    """When, on which commit and on what machine a benchmark ran."""
    import datetime as dt
    import platform
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=REPO_ROOT).stdout.strip()
        except OSError:
            return ""

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    changed = git("status", "--porcelain", "-uno", "--", ".", ":!bench/results")  # uncommitted code
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": git("rev-parse", "--short=12", "HEAD"), "dirty": bool(changed),
            "argv": sys.argv[1:],
            "machine": {"cpus": os.cpu_count(), "cpu": model, "mem_gb": round(mem_kb / 2**20, 1),
                        "kernel": platform.release(), "python": platform.python_version()}}


def _nan_to_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_null(v) for v in value]
    return value


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


def _group_each(pgid: int, of_pid) -> list[float]:
    """``of_pid(pid)`` of each process of a group; processes that exit meanwhile are left out."""
    values = []
    for pid in group_pids(pgid):
        try:
            values.append(of_pid(pid))
        except OSError:
            continue
    return values


def _group_sum(pgid: int, of_pid) -> float:
    """``of_pid(pid)`` summed over a process group; processes that exit meanwhile count 0."""
    return sum(_group_each(pgid, of_pid), 0.0)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) one process has used so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_rss_mb(pgid: int) -> float:
    """Resident memory of a whole process group, MB."""
    return round(_group_sum(pgid, rss_mb), 1)


def group_max_rss_mb(pgid: int) -> float:
    """Resident memory of the largest process of a process group, MB (e.g. one API worker)."""
    return round(max(_group_each(pgid, rss_mb), default=float("nan")), 1)


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by the live processes of a process group."""
    return _group_sum(pgid, cpu_s)


async def open_loop(host: str, port: int, requests: list[bytes], rate: float, seconds: float,
                    results: list[tuple[float, float, bool]], conns: int = 8) -> list[float]:
    """Open-loop HTTP/1.1 load: request i (``requests[i % len]``, raw bytes) is due at
    start + i/rate on connection i % conns; its latency counts from when it was due, so a
    slow server's queueing shows (no coordinated omission). Appends (seconds since start,
    latency, ok: status 200) per request; a broken connection is reopened. Sending stops at
    the end of the run: returns when (seconds since start) each request was due that was
    never sent because the server answered too slowly to keep up (callers count them as errors)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    total = int(rate * seconds)
    end = start + seconds
    unsent: list[float] = []

    async def worker(k: int) -> None:
        reader = writer = None
        for i in range(k, total, conns):
            due = start + i / rate
            if loop.time() > end:
                unsent.extend(j / rate for j in range(i, total, conns))
                break
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                ok = await _exchange(reader, writer, requests[i % len(requests)])
                results.append((due - start, loop.time() - due, ok))
            except _BROKEN:
                results.append((due - start, loop.time() - due, False))
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker(k) for k in range(conns)))
    return unsent


async def closed_loop(host: str, port: int, request: bytes, seconds: float, conns: int = 8) -> tuple[int, int]:
    """Saturating HTTP/1.1 load: each of ``conns`` keep-alive connections sends ``request``
    (raw bytes) again as soon as the answer to the last one is in, for ``seconds``. The server
    always has work waiting (as under peak load), so its CPU per request carries no wake from
    idle (see ``cpu_reference``). Returns (answers with status 200, other answers and broken
    connections)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    counts = [0, 0]

    async def worker() -> None:
        reader = writer = None
        while loop.time() < end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                counts[0 if await _exchange(reader, writer, request) else 1] += 1
            except _BROKEN:
                counts[1] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return counts[0], counts[1]


async def _exchange(reader, writer, request: bytes) -> bool:
    """Sends one request and reads its whole answer; whether its status was 200."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    m = _LENGTH.search(head)
    await reader.readexactly(int(m.group(1)) if m else 0)
    return head[9:12] == b"200"


def _unit() -> int:
    """A fixed piece of pure-Python work (~0.1-0.2 ms here): dict stores, str and int calls."""
    d: dict[int, int] = {}
    s = 0
    for i in range(1500):
        d[i & 255] = i
        s += len(str(i))
    return s


def cpu_reference(gap_s: float = 0.004, n: int = 400) -> dict:
    """The machine, measured in the run: CPU µs of one fixed pure-Python unit (``_unit``) done
    back to back, and done right after ``gap_s`` of idle (a sleep), median of ``n`` each. After
    idle, caches and predictors are cold: a server at a moderate request rate pays that on each
    request, one kept busy does not. On the 2-vCPU machines this was written on, the second was
    0.9-2.0× the first from run to run, and the first itself 160-300 µs: the host's load moves
    both. Compare CPU-per-request figures across runs and machines with these beside them."""
    def timed(gap: float) -> float:
        out = []
        for _ in range(n):
            if gap:
                time.sleep(gap)
            t = time.process_time()
            _unit()
            out.append(time.process_time() - t)
        out.sort()
        return out[len(out) // 2] * 1e6

    _unit()
    busy, idle = round(timed(0.0), 1), round(timed(gap_s), 1)
    return {"unit_us": busy, "after_idle_us": idle, "idle_penalty": round(idle / busy, 2)}


class WorkerConn:
    """One keep-alive HTTP/1.1 connection (so: one worker), raw bytes in and out."""

    def __init__(self, reader, writer):
        self.reader, self.writer, self.worker = reader, writer, 0

    @classmethod
    async def open(cls, host: str, port: int) -> "WorkerConn":
        c = cls(*await asyncio.open_connection(host, port))
        status, body = await c.request("GET", "/readyz")
        if status != 200:
            raise RuntimeError(f"/readyz answered {status}: {body[:200]!r}")
        c.worker = orjson.loads(body)["worker_pid"]
        return c

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        head = f"{method} {path} HTTP/1.1\r\nHost: api\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.writer.write(head.encode() + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in raw.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        return int(raw[9:12]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()
