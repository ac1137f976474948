"""Per-tenant limits across API worker processes: what they cost and how accurate they are.

    flock /tmp/usersignals-stack.lock .venv/bin/python -m bench.api_workers [--workers 2] [--seconds 4]

1. CPU per admission: serving/limits.py (divided per worker, in memory) against a limiter
   shared in the KV layer (a Lua token bucket + a ZSET of in-flight leases, one EVALSHA to
   acquire and a ZREM to release), on the stack's redis-server; API and KV CPU per request.
2. Accuracy on a real API of N workers (kv + api through infra.stack): a tenant with max_rps R
   flooded for T seconds (a) over connections spread evenly on the workers, (b) over connections
   all on one worker, (c) over one connection; requests admitted against what the limits allow
   (R × T plus the workers' full buckets at the start), and the in-flight gauge (sampled, summed
   over workers) against max_concurrency.
3. API CPU per request (all its processes) for a tenant without limits at a fixed rate, with
   1 and with N workers.
The last line is one JSON object (bench/results/api_workers.jsonl).
"""
from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import orjson

from bench.common import WorkerConn, bench_settings, emit, group_cpu_s, log
from infra.stack import Stack, metric_sum

ADMIN = f"adm-{uuid.uuid4().hex}"
KEY = "limits-key"
USERS = [f"b{i}" for i in range(20)]

SHARED_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = burst
if rate > 0 then
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  tokens = tonumber(b[1]) or burst
  local at = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + (now - at) / 1000 * rate)
  if tokens < 1 then return {1, math.ceil((1 - tokens) / rate * 1000)} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= limit then return {2, 0} end
redis.call('ZADD', KEYS[2], now + lease, ARGV[5])
redis.call('PEXPIRE', KEYS[2], lease)
if rate > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'at', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
end
return {0, 0}
"""


def limiter_cpu(kv_url: str, n: int = 20000) -> dict:
    """API-side and KV-side CPU per request of each limiter (microseconds)."""
    import dataclasses

    import redis
    import redis.asyncio as aioredis
    import uvloop

    from serving.limits import TenantLimits
    from usersignals.registry import load_registry

    sync = redis.Redis.from_url(kv_url)

    def kv_cpu() -> float:
        i = sync.info("cpu")
        return i["used_cpu_user"] + i["used_cpu_sys"]

    async def shared(concurrent: int) -> float:
        c = aioredis.Redis.from_url(kv_url, max_connections=64)
        acquire = c.register_script(SHARED_ACQUIRE)
        keys = [f"bench:lim:{uuid.uuid4().hex}:bucket", f"bench:lim:{uuid.uuid4().hex}:inflight"]

        async def one() -> None:
            rid = uuid.uuid4().hex
            await acquire(keys=keys, args=[1e9, 1e9, 10**6, 10_000, rid])
            await c.zrem(keys[1], rid)

        async def run(k: int) -> None:
            for _ in range(k):
                await one()

        await run(200)  # script loaded, connections open
        started = time.process_time()
        await asyncio.gather(*(run(n // concurrent) for _ in range(concurrent)))
        spent = time.process_time() - started
        await c.aclose()
        return spent

    out = {}
    for concurrent in (1, 32):
        k0 = kv_cpu()
        api = uvloop.run(shared(concurrent))
        out[f"shared_kv_{concurrent}_api_us"] = round(api / n * 1e6, 1)
        out[f"shared_kv_{concurrent}_kv_us"] = round((kv_cpu() - k0) / n * 1e6, 1)
    t = dataclasses.replace(next(iter(load_registry().tenants.values())), max_rps=1e9, max_concurrency=10**6)
    lim = TenantLimits(workers=2)
    started = time.process_time()
    for _ in range(10 * n):
        if lim.acquire(t) is None:
            lim.release(t)
    out["divided_api_us"] = round((time.process_time() - started) / (10 * n) * 1e6, 2)
    return out


async def by_worker(host: str, port: int, workers: int, per_worker: int) -> dict[int, list[WorkerConn]]:
    found: dict[int, list[WorkerConn]] = {}
    for _ in range(50 * workers * per_worker):
        c = await WorkerConn.open(host, port)
        conns = found.setdefault(c.worker, [])
        if len(conns) < per_worker:
            conns.append(c)
        else:
            c.writer.close()
        if len(found) == workers and all(len(v) == per_worker for v in found.values()):
            break
    return found


async def flood(stack: Stack, workers: int, seconds: float, max_rps: float, max_concurrency: int) -> dict:
    s = stack.settings
    body = orjson.dumps({"tenant": "flooded", "user_ids": USERS})
    out = {}
    for case in ("even", "one_worker", "one_connection"):
        admin = await WorkerConn.open(s.host, s.api_port)
        # a fresh tenant config each case: the buckets start full, then drain
        status, raw = await admin.request("PUT", "/v1/tenants/flooded", orjson.dumps(
            {"sequences": {"clicks": 20}, "max_rps": max_rps, "max_concurrency": max_concurrency,
             "timeout_ms": 10_000, "api_key": KEY, "description": case}), {"X-Admin-Key": ADMIN})
        assert status == 200, raw
        admin.writer.close()
        await asyncio.sleep(1.5)   # every worker has it (sync every 1 s)
        conns = await by_worker(s.host, s.api_port, workers, 5)   # opened now: idle ones time out in 5 s
        first = next(iter(conns.values()))
        flooders = {"even": [c for cs in conns.values() for c in cs[:4]],   # 4 on each worker
                    "one_worker": first[:4],                                # 4 on one worker
                    "one_connection": first[:1]}[case]
        loop = asyncio.get_running_loop()
        codes: list[tuple[float, int]] = []
        peak = [0.0]
        start = loop.time()
        end = start + seconds

        async def send(c: WorkerConn) -> None:
            while loop.time() < end:
                status, _ = await c.request("POST", "/v1/features", body, {"X-API-Key": KEY})
                codes.append((loop.time() - start, status))

        async def sample() -> None:
            while loop.time() < end:
                _, text = await first[4].request("GET", "/metrics")
                peak[0] = max(peak[0], metric_sum(text.decode(), "usersignals_api_tenant_in_flight", tenant="flooded"))
                await asyncio.sleep(0.05)

        await asyncio.gather(*map(send, flooders), sample())
        for cs in conns.values():
            for c in cs:
                c.writer.close()
        # what the limits allow in the run: the rate, plus every worker's bucket full at the start
        allowed = max_rps * seconds + max(workers, max_rps)
        admitted = sum(st == 200 for _, st in codes)
        out[case] = {"admitted": admitted, "allowed": allowed, "of_allowed": round(admitted / allowed, 3),
                     "refused": sum(st == 429 for _, st in codes), "requests": len(codes),
                     "other": sum(st not in (200, 429) for _, st in codes),
                     "peak_in_flight_sampled": peak[0]}
        log(f"{case}: {out[case]}")
    return out


async def cpu_per_request(stack: Stack, rate: float, seconds: float) -> float:
    """Closed loops paced to ``rate`` in total; the API's CPU seconds per request."""
    s = stack.settings
    body = orjson.dumps({"tenant": "plain", "user_ids": USERS[:1]})
    conns = [await WorkerConn.open(s.host, s.api_port) for _ in range(8)]
    status, raw = await conns[0].request("PUT", "/v1/tenants/plain", orjson.dumps(
        {"sequences": {"clicks": 20}, "max_concurrency": 256, "timeout_ms": 10_000, "api_key": KEY}),
        {"X-Admin-Key": ADMIN})
    assert status == 200, raw
    await asyncio.sleep(1.5)
    loop = asyncio.get_running_loop()
    done = [0]
    pgid = stack.component("api").proc.pid
    cpu0 = group_cpu_s(pgid)
    start = loop.time()

    async def send(k: int, c: WorkerConn) -> None:
        i = k
        while True:
            due = start + i / rate
            if due >= start + seconds:
                return
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            status, _ = await c.request("POST", "/v1/features", body, {"X-API-Key": KEY})
            done[0] += status == 200
            i += len(conns)

    await asyncio.gather(*(send(k, c) for k, c in enumerate(conns)))
    spent = group_cpu_s(pgid) - cpu0
    for c in conns:
        c.writer.close()
    return spent / max(1, done[0]) * 1000


async def every_worker_up(host: str, port: int, workers: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = await by_worker(host, port, workers, 1)
        for cs in found.values():
            cs[0].writer.close()
        if len(found) == workers:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(found)} of {workers} API workers answered within {timeout:.0f}s")


def start(workers: int) -> Stack:
    """kv + api with ``workers`` processes, every one serving, and users with 40 clicks each."""
    import redis

    from usersignals.kv import SequenceStore, StoredEvent
    from usersignals.registry import load_registry

    stack = Stack(bench_settings("api-workers", api_workers=workers), components=("kv", "api"),
                  env={"api": {"USERSIGNALS_ADMIN_KEY": ADMIN}})
    stack.start()
    try:
        s = stack.settings
        store = SequenceStore(redis.Redis(host=s.host, port=s.kv_port), load_registry(s.registry_path), s.kv_prefix)
        now = int(time.time() * 1000)
        store.write([StoredEvent("clicks", u, f"{u}-{n}", now - n * 1000, orjson.dumps(
            {"event_id": f"{u}-{n}", "item_id": f"i{n % 30}", "ts": now - n * 1000, "dwell_ms": 3000}))
            for u in USERS for n in range(40)])
        asyncio.run(every_worker_up(s.host, s.api_port, workers))
    except BaseException:
        stack.stop()
        raise
    return stack


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--max-rps", type=float, default=40.0)
    p.add_argument("--max-concurrency", type=int, default=2)
    p.add_argument("--cpu-rate", type=float, default=200.0, help="requests/s for the CPU-per-request runs")
    args = p.parse_args(argv)
    result: dict = {"bench": "api_workers", "workers": args.workers, "max_rps": args.max_rps,
                    "max_concurrency": args.max_concurrency}
    stack = start(args.workers)
    try:
        result["limiter_cpu_us_per_req"] = limiter_cpu(stack.settings.kv_url)
        log(f"limiter CPU: {result['limiter_cpu_us_per_req']}")
        result["flood"] = asyncio.run(flood(stack, args.workers, args.seconds, args.max_rps, args.max_concurrency))
        result[f"api_cpu_ms_per_req_{args.workers}_workers"] = round(
            asyncio.run(cpu_per_request(stack, args.cpu_rate, args.seconds)), 3)
    finally:
        stack.stop()
    stack = start(1)
    try:
        result["api_cpu_ms_per_req_1_worker"] = round(asyncio.run(cpu_per_request(stack, args.cpu_rate, args.seconds)), 3)
    finally:
        stack.stop()
    emit(result)


if __name__ == "__main__":
    main()
