"""make bench-serving: POST /v1/features latency at a fixed request rate, against the same
fetch done directly on the KV server, measured side by side in one run.

A private stack (broker, KV, API as its own uvicorn process) on free ports. One user holds
3 datasets × 100+ events; a bench tenant reads 100 of each. The load is open-loop: each
of 8 keep-alive connections sends on a fixed schedule, and latency is measured from the
scheduled send time (so a slow response also delays, and is charged to, the next one).
The raw baseline runs the same Lua read of the same keys over redis.asyncio at the same
rate. The API process's RSS is read from /proc after the load.

Last line: {"bench": "serving", "rps": …, "p50_ms": …, "p99_ms": …, "raw_p99_ms": …,
"ratio_to_raw": …, "rss_mb": …, "ufr_p99_ms": …}  (the headline figures are for json)
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time

import orjson

from bench.common import bench_settings, emit, log, open_loop, percentile, rss_mb
from infra.stack import Stack

USER = "bench-user"
DATASETS = {"clicks": "click", "closeups": "closeup", "views": "view"}


def seed(settings, registry) -> None:
    from usersignals.features import ItemFeatureStore
    from usersignals.kv import SequenceStore, StoredEvent, connect

    client = connect(settings.kv_url)
    store = SequenceStore(client, registry, settings.kv_prefix)
    now = int(time.time() * 1000)
    events = []
    for ds in DATASETS:
        for n in range(150):
            body = {"event_id": f"{ds}-{n}", "item_id": f"i{n}", "ts": now - n * 1000, "surface": "homefeed",
                    "dwell_ms": 1000 + n, "features": {"category": f"c{n % 7}", "popularity": 0.25}}
            events.append(StoredEvent(ds, USER, f"{ds}-{n}", now - n * 1000, orjson.dumps(body)))
    store.write(events)
    store.trim_all()
    ItemFeatureStore(client, settings.kv_prefix).put_many(
        {f"i{n}": {"category": f"c{n % 7}", "popularity": 0.25, "embedding": [0.01 * n] * 16} for n in range(150)})


async def http_load(host: str, port: int, request: bytes, rate: float, seconds: float, conns: int = 8):
    """(latencies, errors, seconds taken) of open-loop load with one request (``open_loop``);
    requests the API was too slow to send count as errors."""
    loop = asyncio.get_running_loop()
    started = loop.time() + 0.2  # open_loop's first request is due 0.2 s after it starts
    results: list[tuple[float, float, bool]] = []
    unsent = await open_loop(host, port, [request], rate, seconds, results, conns)
    return [lat for _, lat, _ in results], sum(not ok for *_, ok in results) + len(unsent), loop.time() - started


async def raw_load(settings, registry, rate: float, seconds: float, conns: int = 8):
    import redis.asyncio as aioredis

    from usersignals.kv import READ_JSON_LUA, SequenceStore

    client = aioredis.Redis.from_url(settings.kv_url)
    layout = SequenceStore(client, registry, settings.kv_prefix)
    script = client.register_script(READ_JSON_LUA)
    keys, args = layout.read_request(USER, {ds: 100 for ds in DATASETS})
    await script(keys=keys, args=args)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    total = int(rate * seconds)
    latencies: list[float] = []

    async def worker(k: int):
        for i in range(k, total, conns):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            rows = await script(keys=keys, args=args)
            assert len(rows) == 3
            latencies.append(loop.time() - due)

    await asyncio.gather(*(worker(k) for k in range(conns)))
    await client.aclose()
    return latencies


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    from usersignals.registry import load_registry

    registry = load_registry()
    settings = bench_settings("bench-serving")
    stack = Stack(settings, components=("broker", "kv", "api"))
    try:
        stack.start()
        seed(settings, registry)
        import httpx

        admin = {"X-Admin-Key": "admin-dev-key"}
        tenant = {"sequences": {ds: 100 for ds in DATASETS}, "filters": {"dedup_items": False},
                  "max_concurrency": 256, "timeout_ms": 1000, "api_key": "bench-key", "format": "json"}
        base = f"http://{settings.host}:{settings.api_port}"
        r = httpx.put(f"{base}/v1/tenants/bench", json=tenant, headers=admin)
        r.raise_for_status()
        time.sleep(1.2)  # every worker picks the tenant up from the KV layer

        def request(fmt: str, accept: str) -> bytes:
            body = orjson.dumps({"tenant": "bench", "user_ids": [USER], "format": fmt})
            return (f"POST /v1/features HTTP/1.1\r\nHost: bench\r\nX-API-Key: bench-key\r\n"
                    f"Content-Type: application/json\r\nAccept: {accept}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body

        check = httpx.post(f"{base}/v1/features", json={"tenant": "bench", "user_ids": [USER]},
                           headers={"X-API-Key": "bench-key"}).json()
        served = sum(len(v) for v in check["users"][0]["sequences"].values())
        assert served == 300, f"expected 300 events, got {served}"

        host, port = settings.host, settings.api_port
        json_req = request("json", "application/json")
        ufr_req = request("ufr", "application/vnd.usersignals.ufr")
        asyncio.run(http_load(host, port, json_req, args.rate, 3))  # warm-up
        lat_json, err_json, took = asyncio.run(http_load(host, port, json_req, args.rate, args.seconds))
        lat_raw = asyncio.run(raw_load(settings, registry, args.rate, args.seconds))
        lat_ufr, err_ufr, _ = asyncio.run(http_load(host, port, ufr_req, args.rate, args.seconds))
        rss = rss_mb(stack.component("api").proc.pid)

        ms = lambda xs, q: round(percentile(xs, q) * 1000, 3)  # noqa: E731
        p99, raw99 = ms(lat_json, 99), ms(lat_raw, 99)
        log(f"json: {len(lat_json)} requests in {took:.1f}s, p50 {ms(lat_json, 50)} ms, p99 {p99} ms, "
            f"errors {err_json}")
        log(f"ufr (binary): p50 {ms(lat_ufr, 50)} ms, p99 {ms(lat_ufr, 99)} ms, errors {err_ufr}")
        log(f"raw KV read: p50 {ms(lat_raw, 50)} ms, p99 {raw99} ms; API RSS {rss:.0f} MB")
        emit({"bench": "serving", "rps": round(len(lat_json) / took), "p50_ms": ms(lat_json, 50), "p99_ms": p99,
              "raw_p50_ms": ms(lat_raw, 50), "raw_p99_ms": raw99, "ratio_to_raw": round(p99 / raw99, 2),
              "rss_mb": round(rss, 1), "ufr_p50_ms": ms(lat_ufr, 50), "ufr_p99_ms": ms(lat_ufr, 99),
              "errors": err_json + err_ufr, "events_per_response": served})
        return 0
    finally:
        stack.stop()
        shutil.rmtree(settings.data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
