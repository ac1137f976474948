"""make bench-freshness: how long from produce to visible through the read endpoint,
under a background load of synthetic events (default 2,000/s).

A private stack (broker, KV, job, API) on free ports. The generator produces the load
from its own process. This process sends probe events one at a time (a fresh event for a
probe user, key = user id, no linger), polls GET /v1/users/{probe}/events?type=click&limit=1
every few milliseconds until the probe's event_id is the newest, and records the time
from just before the produce call to the first response that shows it.

Last line: {"bench": "freshness", "rate": …, "p50_ms": …, "p99_ms": …}
"""
from __future__ import annotations

import argparse
import http.client
import random
import shutil
import subprocess
import sys
import time

import orjson

from bench.common import bench_settings, emit, log, metric_total, percentile
from infra.stack import Stack
from usersignals.settings import MAIN_PYTHON, load_settings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=2000.0, help="background events per second")
    ap.add_argument("--seconds", type=float, default=40.0, help="how long to probe")
    defaults = load_settings()
    ap.add_argument("--bundle-size", type=int, default=defaults.bundle_size)
    ap.add_argument("--bundle-time-ms", type=int, default=defaults.bundle_time_ms)
    args = ap.parse_args(argv)
    settings = bench_settings("bench-freshness", bundle_size=args.bundle_size, bundle_time_ms=args.bundle_time_ms)
    stack = Stack(settings, components=("broker", "kv", "job", "api"))
    load = None
    try:
        stack.start()
        from confluent_kafka import Producer

        load = subprocess.Popen([str(MAIN_PYTHON), "-m", "infra.generator", "--rate", str(args.rate)],
                                env=stack.child_env(), stdout=subprocess.DEVNULL,
                                stderr=open(settings.log_dir / "generator.log", "wb"))
        producer = Producer({"bootstrap.servers": settings.broker, "linger.ms": 0, "acks": "all", "enable.idempotence": True})
        api = http.client.HTTPConnection(settings.host, settings.api_port, timeout=5)
        reader = {"X-Admin-Key": settings.admin_key}  # the stack's API takes the settings' admin key
        time.sleep(5)  # let the load reach its rate
        in_before = metric_total(settings.job_metrics_port, "usersignals_indexer_events_in_total") or 0
        t_before = time.monotonic()
        latencies: list[float] = []
        lost = 0
        end = time.monotonic() + args.seconds
        n = 0
        while time.monotonic() < end:
            n += 1
            user = f"probe-{n % 50}"
            event_id = f"probe-{time.time_ns()}"
            value = orjson.dumps({"event_id": event_id, "user_id": user, "event_type": "click",
                                  "item_id": "i1", "ts": int(time.time() * 1000), "surface": "probe"})
            t0 = time.perf_counter()
            producer.produce(settings.events_topic, key=user.encode(), value=value)
            producer.poll(0)
            deadline = t0 + 5.0
            seen = False
            while time.perf_counter() < deadline:
                api.request("GET", f"/v1/users/{user}/events?type=click&limit=1", headers=reader)
                body = api.getresponse().read()
                if event_id.encode() in body:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    seen = True
                    break
                time.sleep(0.003)
                producer.poll(0)
            lost += not seen
            time.sleep(random.uniform(0.02, 0.08))
        producer.flush(5)
        producer = None  # closed before the broker stops, so it logs no disconnects
        in_after = metric_total(settings.job_metrics_port, "usersignals_indexer_events_in_total") or 0
        measured_rate = (in_after - in_before) / (time.monotonic() - t_before)
        log(f"{len(latencies)} probes at ~{measured_rate:,.0f} events/s indexed; not seen within 5s: {lost}")
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        log(f"produce -> visible via API: p50 {p50:.0f} ms, p90 {percentile(latencies, 90):.0f} ms, "
            f"p99 {p99:.0f} ms, max {max(latencies):.0f} ms")
        emit({"bench": "freshness", "rate": round(measured_rate), "p50_ms": round(p50, 1),
              "p99_ms": round(p99, 1), "p90_ms": round(percentile(latencies, 90), 1),
              "max_ms": round(max(latencies), 1), "probes": len(latencies), "not_seen": lost,
              "bundle_size": args.bundle_size, "bundle_time_ms": args.bundle_time_ms})
        return 0
    finally:
        if load is not None:
            load.terminate()
            load.wait(10)
        stack.stop()
        shutil.rmtree(settings.data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
