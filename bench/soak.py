"""make soak: the whole local stack under steady load for 30 minutes; errors, p99 drift, RSS and CPU drift.

A private stack (broker, KV, PostgreSQL, indexing job, trimmer, API) on free ports takes
generated events at ``--events`` per second (2,000) while an open-loop client sends
``--rps`` (150, about half of what two cores answer beside the indexing) POST /v1/features requests a second for random users of the same
population, through a tenant shaped like the home-feed one (three sequences, serving-time
embeddings) but answering JSON. Latency is measured from each request's scheduled send
time, so a stall is charged in full. Every minute the harness logs p50/p99, errors, the
indexing lag and each process's RSS and CPU (the job counts its JVM and Python workers).

Errors are responses other than 200, broken connections, requests that fell so far behind
schedule that they were never sent before the end, and restarts of any component.
Last line: {"bench": "soak", "errors": …, "p99_ms_first_min": …, "p99_ms_last_min": …,
"p99_ms_first_5min": …, "p99_ms_last_5min": …, "broker_cores_first_min": …,
"broker_cores_last_min": …, "rss_mb_start": …, "rss_mb_end": …, ...}  (RSS: the API process,
after the first minute and at the end; other processes' figures follow under "rss_mb").
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import time

import orjson

from bench.common import bench_settings, emit, group_cpu_s, group_rss_mb, log, metric_total, open_loop, percentile

TENANT, KEY = "soak", "soak-dev-key"


def request_bytes(user: str) -> bytes:
    body = orjson.dumps({"tenant": TENANT, "user_ids": [user]})
    return (f"POST /v1/features HTTP/1.1\r\nHost: soak\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rps", type=float, default=150.0, help="API requests per second")
    ap.add_argument("--events", type=float, default=2000.0, help="events per second produced")
    args = ap.parse_args(argv)
    import threading

    import httpx

    from infra.stack import Stack
    from usersignals.registry import load_registry

    registry = load_registry()
    settings = bench_settings("soak")
    stack = Stack(settings, with_generator=True, generator_rate=args.events,
                  components=("broker", "kv", "postgres", "job", "trimmer", "api", "generator"))
    results: list[tuple[float, float, bool]] = []
    samples: list[dict] = []
    stop = threading.Event()
    try:
        stack.start()
        base = f"http://{settings.host}:{settings.api_port}"
        home = registry.tenants["homefeed_ranking"]
        tenant = {"sequences": dict(home.sequences), "enrichments": list(home.enrichments), "format": "json",
                  "filters": {"dedup_items": True}, "max_concurrency": 256, "timeout_ms": 1000, "api_key": KEY}
        httpx.put(f"{base}/v1/tenants/{TENANT}", json=tenant,
                  headers={"X-Admin-Key": settings.admin_key}).raise_for_status()
        time.sleep(5)  # the generator's first sessions land; every API worker sees the tenant
        rng = random.Random(5)
        requests = [request_bytes(f"u{rng.randrange(2000)}") for _ in range(5000)]
        names = [c.name for c in stack.components if c.name != "generator"]

        def cpu_now() -> dict[str, float]:
            return {**{n: group_cpu_s(stack.component(n).proc.pid) for n in names},
                    "generator": group_cpu_s(stack.component("generator").proc.pid), "client": time.process_time()}

        def watch() -> None:  # the supervisor's loop (restarts count as errors) + per-minute samples
            next_sample = time.monotonic() + 60
            cpu_before = cpu_now()
            while not stop.is_set():
                stack.watch_once()
                if time.monotonic() >= next_sample:
                    next_sample += 60
                    cpu = cpu_now()
                    samples.append({"rss": {n: group_rss_mb(stack.component(n).proc.pid) for n in names},
                                    "cores": {n: round(max(0.0, cpu[n] - cpu_before[n]) / 60, 2) for n in cpu},
                                    "indexed": metric_total(settings.job_metrics_port,
                                                            "usersignals_indexer_events_in_total")})
                    cpu_before = cpu
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        rss_at_start = {n: group_rss_mb(stack.component(n).proc.pid) for n in names}
        watcher.start()
        seconds = args.minutes * 60
        log(f"soak: {args.rps:.0f} requests/s and {args.events:.0f} events/s for {seconds:.0f} s")
        unsent = asyncio.run(open_loop(settings.host, settings.api_port, requests, args.rps, seconds, results,
                                           conns=64))
        stop.set()
        watcher.join(5)
        restarts = {c.name: c.restarts for c in stack.components if c.restarts}
        rss_at_end = {n: group_rss_mb(stack.component(n).proc.pid) for n in names}
        lag = metric_total(settings.job_metrics_port, "usersignals_indexer_end_to_end_lag_seconds_sum")
        lag_n = metric_total(settings.job_metrics_port, "usersignals_indexer_end_to_end_lag_seconds_count")

        minutes = int(seconds // 60) or 1
        per_min = []
        for m in range(minutes):
            lat = [x * 1000 for t, x, ok in results if m * 60 <= t < (m + 1) * 60]
            late = sum(1 for t in unsent if m * 60 <= t < (m + 1) * 60)
            errs = sum(1 for t, _, ok in results if m * 60 <= t < (m + 1) * 60 and not ok) + late
            per_min.append({"p50": round(percentile(lat, 50), 2), "p99": round(percentile(lat, 99), 2),
                            "requests": len(lat), "errors": errs, "unsent": late})
            log(f"minute {m + 1}: {per_min[-1]}"
                + (f", rss {samples[m]['rss']}, cores {samples[m]['cores']}, indexed {samples[m]['indexed']:.0f}"
                   if m < len(samples) else ""))
        def p99_of_minutes(first: int, last: int) -> float:
            lat = [x * 1000 for t, x, _ in results if first * 60 <= t < last * 60]
            return round(percentile(lat, 99), 2)

        window = min(5, minutes)
        http_errors = sum(1 for _, _, ok in results if not ok)
        api_rss_start = samples[0]["rss"]["api"] if samples else rss_at_start["api"]
        if unsent:
            log(f"{len(unsent)} requests were due but never sent: the stack answered too slowly to keep "
                f"{args.rps:.0f}/s")
        emit({"bench": "soak", "errors": http_errors + len(unsent) + sum(restarts.values()),
              "p99_ms_first_min": per_min[0]["p99"], "p99_ms_last_min": per_min[-1]["p99"],
              "p99_ms_first_5min": p99_of_minutes(0, window), "p99_ms_last_5min": p99_of_minutes(minutes - window, minutes),
              "broker_cores_first_min": samples[0]["cores"]["broker"] if samples else None,
              "broker_cores_last_min": samples[-1]["cores"]["broker"] if samples else None,
              "rss_mb_start": api_rss_start, "rss_mb_end": rss_at_end["api"],
              "requests": len(results), "rps": round(len(results) / seconds), "http_errors": http_errors,
              "unsent": len(unsent),
              "restarts": restarts, "p99_ms_by_min": [m["p99"] for m in per_min],
              "events_indexed": metric_total(settings.job_metrics_port, "usersignals_indexer_events_in_total"),
              "index_lag_mean_s": round(lag / lag_n, 2) if lag_n else None,
              "rss_mb": {"after_first_min": samples[0]["rss"] if samples else rss_at_start, "end": rss_at_end},
              "cores_first_min": samples[0]["cores"] if samples else None,
              "cores_last_min": samples[-1]["cores"] if samples else None})
        return 0
    finally:
        stop.set()
        stack.stop()
        shutil.rmtree(settings.data_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
