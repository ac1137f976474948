"""make bench-serving: POST /v1/features — API CPU per request and latency at a fixed request
rate, against the same fetch done directly on the KV server, measured side by side in one run.

A private stack (broker, KV, API as its own uvicorn process(es)) on free ports. One user holds
3 datasets × 150 events; a bench tenant reads 100 of each, as ``json`` and as the binary
model-ready format (an Arrow IPC stream). A second user holds the home-feed
datasets, read through the registry's ``homefeed_ranking`` tenant (filters, serving-time
embeddings, views, its own format): the realistic heavy request.

The load is open-loop: each of 8 keep-alive connections sends on a fixed schedule, and
latency is measured from the scheduled send time (so a slow response also delays, and is
charged to, the next one). The raw baseline runs the same Lua read of the same keys through
the API's own KV client at the same rate. CPU is read from /proc for the API's process group (all its
workers) and for the KV server around each phase, so ``api_cpu_ms_per_req`` (API CPU seconds
/ requests answered) holds on a noisy or slower machine where latency swings; the KV server's
CPU per raw fetch (``raw_cpu_ms_per_req``) is the same-run reference.

Two saturated phases follow (``closed_loop``: 8 requests always in flight, ``--sat-seconds``
each), json and home feed: the CPU per request of an API that never idles between requests.
Then the floor (``bench.floor_api``): the same HTTP server, with the API's workers, answering
the json load at the same rate (then saturated) with a body of the same size and no other
work; its CPU per request is what HTTP alone costs on this machine, so the API's own share is
the difference. Last, with the stack idle, the machine's own reference (``cpu_reference``):
the CPU time of a fixed unit of Python work, back to back and right after 4 ms of idle.

Last line: {"bench": "serving", "rps": …, "p50_ms": …, "p99_ms": …, "raw_p99_ms": …,
"ratio_to_raw": …, "rss_mb": …, "rss_mb_max_process": …, "api_cpu_ms_per_req": …,
"raw_cpu_ms_per_req": …, "api_to_raw_cpu": …, "binary_format": "arrow", "arrow_p50_ms": …,
"arrow_p99_ms": …, "arrow_api_cpu_ms_per_req": …, "home_api_cpu_ms_per_req": …, "home_p99_ms": …,
"sat_rps": …, "sat_api_cpu_ms_per_req": …, "home_sat_rps": …, "home_sat_api_cpu_ms_per_req": …,
"ref_unit_us": …, "ref_unit_after_idle_us": …, "ref_idle_penalty": …,
"floor_api_cpu_ms_per_req": …, "floor_p99_ms": …, "floor_sat_api_cpu_ms_per_req": …,
"floor_sat_rps": …} (the headline figures are for json at 500/s)
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time

import orjson

from bench.common import (bench_settings, closed_loop, cpu_reference, emit, group_cpu_s, group_max_rss_mb,
                          group_rss_mb, log, open_loop, percentile)
from infra.stack import Stack
from infra.stack.probes import free_port, port_open
from infra.stack.supervisor import Component, Supervisor
from serving.featurize import ARROW_CONTENT_TYPE

USER, HOME_USER = "bench-user", "home-user"
DATASETS = {"clicks": "click", "closeups": "closeup", "views": "view"}
HOME_DATASETS = ("clicks", "repins", "closeups")


def seed(settings, registry) -> int:
    """Writes both users' events and every item's features; returns the home-feed events stored."""
    from usersignals.features import ItemFeatureStore
    from usersignals.kv import SequenceStore, StoredEvent, connect

    client = connect(settings.kv_url)
    store = SequenceStore(client, registry, settings.kv_prefix)
    now = int(time.time() * 1000)
    events = []

    def add(ds: str, user: str, n: int, item: str, dwell: int) -> None:
        body = {"event_id": f"{user}-{ds}-{n}", "item_id": item, "ts": now - n * 1000, "surface": "homefeed",
                "dwell_ms": dwell, "features": {"category": f"c{n % 7}", "popularity": 0.25}}
        events.append(StoredEvent(ds, user, body["event_id"], body["ts"], orjson.dumps(body)))

    for ds in DATASETS:
        for n in range(150):
            add(ds, USER, n, f"i{n}", 1000 + n)
    # Home feed: distinct items per dataset (the tenant dedups items), every fourth close-up
    # under its dwell threshold, so the filters have work to do.
    for ds in HOME_DATASETS:
        for n in range(registry.datasets[ds].retention + 20):
            add(ds, HOME_USER, n, f"{ds}-i{n}", 400 if ds == "closeups" and n % 4 == 0 else 1500 + n)
    store.write(events)
    store.trim_all()
    items = {orjson.loads(e.payload)["item_id"] for e in events}
    ItemFeatureStore(client, settings.kv_prefix).put_many(
        {i: {"category": "c1", "popularity": 0.25, "embedding": [0.01 * (k % 100)] * 16}
         for k, i in enumerate(sorted(items))})
    return sum(1 for e in events if e.user_id == HOME_USER)


async def http_load(host: str, port: int, request: bytes, rate: float, seconds: float, conns: int = 8):
    """(latencies, errors, seconds taken) of open-loop load with one request (``open_loop``);
    requests the API was too slow to send count as errors."""
    loop = asyncio.get_running_loop()
    started = loop.time() + 0.2  # open_loop's first request is due 0.2 s after it starts
    results: list[tuple[float, float, bool]] = []
    unsent = await open_loop(host, port, [request], rate, seconds, results, conns)
    return [lat for _, lat, _ in results], sum(not ok for *_, ok in results) + len(unsent), loop.time() - started


async def raw_load(settings, registry, rate: float, seconds: float, conns: int = 8):
    """The same Lua read of the same keys, straight to the KV server through the API's own
    pipelined client (serving.kv_client), at the same rate."""
    from serving.kv_client import AsyncKV
    from usersignals.kv import READ_JSON_LUA, SequenceStore

    kv = AsyncKV.for_url(settings.kv_url)
    keys, args = SequenceStore(None, registry, settings.kv_prefix).read_request(USER, {ds: 100 for ds in DATASETS})
    script = READ_JSON_LUA.encode()
    await kv.evalsha(script, keys, args)
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
            rows = await kv.evalsha(script, keys, args)
            assert len(rows) == 3
            latencies.append(loop.time() - due)

    await asyncio.gather(*(worker(k) for k in range(conns)))
    kv.close()
    return latencies


class FloorServer(Supervisor):
    """``bench.floor_api`` with the bench's API workers, on a free port: started, waited for and
    stopped (its workers with it) by the same supervisor as the stack's components; its output
    goes to the bench's log directory (floor.log)."""

    def __init__(self, settings, body_bytes: int):
        super().__init__(settings)
        self.port = free_port()
        self.body_bytes = body_bytes

    def define(self) -> list[Component]:
        s = self.settings
        argv = [sys.executable, "-m", "bench.floor_api", "--host", s.host, "--port", str(self.port),
                "--workers", str(s.api_workers), "--bytes", str(self.body_bytes)]
        return [Component("floor", argv, ready=lambda: port_open(s.host, self.port), ports=(self.port,),
                          restart=False)]

    def banner(self) -> str:
        return f"floor server on {self.settings.host}:{self.port}"


def floor_run(settings, body_bytes: int, request: bytes, args) -> dict:
    """The floor (``FloorServer``): the same HTTP server with the API's workers and a response
    of the json answer's size, doing no work; the same json load at the same rate, then
    saturated. Its CPU per request is what HTTP alone costs on this machine."""
    server = FloorServer(settings, body_bytes)
    server.start()
    try:
        host, port, pid = settings.host, server.port, server.component("floor").proc.pid
        asyncio.run(http_load(host, port, request, args.rate / 2, 2))  # warm-up, as the API's
        before = group_cpu_s(pid)
        lat, errors, _ = asyncio.run(http_load(host, port, request, args.rate, args.seconds))
        middle = group_cpu_s(pid)
        sat_ok, sat_err = asyncio.run(closed_loop(host, port, request, args.sat_seconds))
        after = group_cpu_s(pid)
    finally:
        server.stop()
    return {"cpu_ms": round((middle - before) * 1000 / max(1, len(lat)), 4),
            "p99_ms": round(percentile(lat, 99) * 1000, 3),
            "sat_cpu_ms": round((after - middle) * 1000 / max(1, sat_ok), 4),
            "sat_rps": round(sat_ok / args.sat_seconds), "errors": errors + sat_err}


class CpuMeter:
    """CPU seconds used by the API's process group and the KV server over one phase."""

    def __init__(self, stack: Stack):
        self.pids = {"api": stack.component("api").proc.pid, "kv": stack.component("kv").proc.pid}

    def __enter__(self):
        self.start = {n: group_cpu_s(p) for n, p in self.pids.items()}
        return self

    def __exit__(self, *exc):
        self.used = {n: group_cpu_s(p) - self.start[n] for n, p in self.pids.items()}

    def ms_per(self, name: str, requests: int) -> float:
        return round(self.used[name] * 1000 / max(1, requests), 4)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--home-rate", type=float, default=250.0, help="home-feed requests per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--sat-seconds", type=float, default=5.0, help="each saturated (closed-loop) phase")
    ap.add_argument("--workers", type=int, default=None,
                    help="API worker processes (default: USERSIGNALS_API_WORKERS, i.e. the cores)")
    args = ap.parse_args(argv)
    from usersignals.registry import load_registry

    registry = load_registry()
    settings = bench_settings("bench-serving", **({"api_workers": args.workers} if args.workers else {}))
    stack = Stack(settings, components=("broker", "kv", "api"))
    try:
        stack.start()
        home_stored = seed(settings, registry)
        import httpx

        admin = {"X-Admin-Key": "admin-dev-key"}
        tenant = {"sequences": {ds: 100 for ds in DATASETS}, "filters": {"dedup_items": False},
                  "max_concurrency": 256, "timeout_ms": 1000, "api_key": "bench-key", "format": "json"}
        base = f"http://{settings.host}:{settings.api_port}"
        r = httpx.put(f"{base}/v1/tenants/bench", json=tenant, headers=admin)
        r.raise_for_status()
        # The home-feed tenant as registered, with a timeout and concurrency that a bench's
        # queueing does not trip (the registry's 50 ms is for production traffic).
        home = httpx.get(f"{base}/v1/tenants", headers=admin).json()
        home_cfg = next(t["config"] for t in home["tenants"] if t["name"] == "homefeed_ranking")
        home_cfg.update({"timeout_ms": 1000, "max_concurrency": 256, "log_sample_rate": 0.0})
        httpx.put(f"{base}/v1/tenants/homefeed_ranking", json=home_cfg, headers=admin).raise_for_status()
        time.sleep(1.2)  # every worker picks the tenants up from the KV layer

        def request(tenant: str, key: str, user: str, fmt: str | None, accept: str) -> bytes:
            body = orjson.dumps({"tenant": tenant, "user_ids": [user], **({"format": fmt} if fmt else {})})
            return (f"POST /v1/features HTTP/1.1\r\nHost: bench\r\nX-API-Key: {key}\r\n"
                    f"Content-Type: application/json\r\nAccept: {accept}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body

        answer = httpx.post(f"{base}/v1/features", json={"tenant": "bench", "user_ids": [USER]},
                            headers={"X-API-Key": "bench-key"})
        check = answer.json()
        served = sum(len(v) for v in check["users"][0]["sequences"].values())
        assert served == 300, f"expected 300 events, got {served}"
        home_check = httpx.post(f"{base}/v1/features", json={"tenant": "homefeed_ranking", "user_ids": [HOME_USER],
                                                             "format": "json"},
                                headers={"X-API-Key": "homefeed-dev-key"}).json()
        home_served = sum(len(v) for v in home_check["users"][0]["sequences"].values())
        log(f"home feed: {home_stored} events stored, {home_served} served after filters")

        host, port = settings.host, settings.api_port
        json_req = request("bench", "bench-key", USER, "json", "application/json")
        bin_req = request("bench", "bench-key", USER, "arrow", ARROW_CONTENT_TYPE)
        home_req = request("homefeed_ranking", "homefeed-dev-key", HOME_USER, None,
                           f"{ARROW_CONTENT_TYPE}, application/json;q=0.5")
        for req in (json_req, bin_req, home_req):
            asyncio.run(http_load(host, port, req, args.rate / 2, 2))  # warm-up

        def measured(load):
            meter = CpuMeter(stack)
            with meter:
                out = asyncio.run(load)
            return out, meter

        (lat_json, err_json, took), cpu_json = measured(http_load(host, port, json_req, args.rate, args.seconds))
        lat_raw, cpu_raw = measured(raw_load(settings, registry, args.rate, args.seconds))
        (lat_bin, err_bin, _), cpu_bin = measured(http_load(host, port, bin_req, args.rate, args.seconds))
        (lat_home, err_home, _), cpu_home = measured(
            http_load(host, port, home_req, args.home_rate, args.seconds))
        # Saturated: 8 requests always in flight, so the API never idles between requests.
        (sat_ok, sat_err), cpu_sat = measured(closed_loop(host, port, json_req, args.sat_seconds))
        (home_sat_ok, home_sat_err), cpu_home_sat = measured(closed_loop(host, port, home_req, args.sat_seconds))
        floor = floor_run(settings, len(answer.content), json_req, args)
        api_pid = stack.component("api").proc.pid
        rss, rss_one = group_rss_mb(api_pid), group_max_rss_mb(api_pid)  # every process; the largest (a worker)
        ref = cpu_reference()  # the machine's own figures, with the stack idle

        ms = lambda xs, q: round(percentile(xs, q) * 1000, 3)  # noqa: E731
        p99, raw99 = ms(lat_json, 99), ms(lat_raw, 99)
        api_cpu = cpu_json.ms_per("api", len(lat_json))
        raw_cpu = cpu_raw.ms_per("kv", len(lat_raw))
        log(f"json: {len(lat_json)} requests in {took:.1f}s, p50 {ms(lat_json, 50)} ms, p99 {p99} ms, "
            f"errors {err_json}; API CPU {api_cpu} ms/request, KV {cpu_json.ms_per('kv', len(lat_json))} ms")
        log(f"arrow: p50 {ms(lat_bin, 50)} ms, p99 {ms(lat_bin, 99)} ms, errors {err_bin}; "
            f"API CPU {cpu_bin.ms_per('api', len(lat_bin))} ms/request")
        log(f"home feed ({home_served} events + embeddings, {args.home_rate:g}/s): p50 {ms(lat_home, 50)} ms, "
            f"p99 {ms(lat_home, 99)} ms, errors {err_home}; API CPU {cpu_home.ms_per('api', len(lat_home))} ms/request")
        log(f"raw KV read: p50 {ms(lat_raw, 50)} ms, p99 {raw99} ms, KV CPU {raw_cpu} ms/read; API RSS {rss:.0f} MB "
            f"(largest process {rss_one:.0f} MB)")
        sat_cpu, home_sat_cpu = cpu_sat.ms_per("api", sat_ok), cpu_home_sat.ms_per("api", home_sat_ok)
        log(f"saturated (8 in flight, {args.sat_seconds:g}s): json {sat_ok / args.sat_seconds:.0f}/s, API CPU "
            f"{sat_cpu} ms/request; home feed {home_sat_ok / args.sat_seconds:.0f}/s, API CPU {home_sat_cpu} ms/request")
        log(f"floor (the same HTTP server doing no work, {len(answer.content)} bytes an answer): "
            f"{floor['cpu_ms']} ms of CPU a request at {args.rate:g}/s, p99 {floor['p99_ms']} ms; saturated "
            f"{floor['sat_rps']}/s, {floor['sat_cpu_ms']} ms a request")
        log(f"machine: a fixed pure-Python unit takes {ref['unit_us']} us of CPU back to back, "
            f"{ref['after_idle_us']} us after 4 ms idle ({ref['idle_penalty']}x)")
        emit({"bench": "serving", "rps": round(len(lat_json) / took), "p50_ms": ms(lat_json, 50), "p99_ms": p99,
              "raw_p50_ms": ms(lat_raw, 50), "raw_p99_ms": raw99, "ratio_to_raw": round(p99 / raw99, 2),
              "rss_mb": round(rss, 1), "rss_mb_max_process": rss_one, "api_workers": settings.api_workers,
              "api_cpu_ms_per_req": api_cpu, "kv_cpu_ms_per_req": cpu_json.ms_per("kv", len(lat_json)),
              "raw_cpu_ms_per_req": raw_cpu, "api_to_raw_cpu": round(api_cpu / raw_cpu, 2) if raw_cpu else None,
              "binary_format": "arrow", "arrow_p50_ms": ms(lat_bin, 50), "arrow_p99_ms": ms(lat_bin, 99),
              "arrow_api_cpu_ms_per_req": cpu_bin.ms_per("api", len(lat_bin)),
              "home_api_cpu_ms_per_req": cpu_home.ms_per("api", len(lat_home)), "home_rps": args.home_rate,
              "home_p50_ms": ms(lat_home, 50), "home_p99_ms": ms(lat_home, 99), "home_events_per_response": home_served,
              "sat_rps": round(sat_ok / args.sat_seconds), "sat_api_cpu_ms_per_req": sat_cpu,
              "home_sat_rps": round(home_sat_ok / args.sat_seconds), "home_sat_api_cpu_ms_per_req": home_sat_cpu,
              "ref_unit_us": ref["unit_us"], "ref_unit_after_idle_us": ref["after_idle_us"],
              "ref_idle_penalty": ref["idle_penalty"],
              "floor_api_cpu_ms_per_req": floor["cpu_ms"], "floor_p99_ms": floor["p99_ms"],
              "floor_sat_api_cpu_ms_per_req": floor["sat_cpu_ms"], "floor_sat_rps": floor["sat_rps"],
              "errors": err_json + err_bin + err_home + sat_err + home_sat_err + floor["errors"],
              "events_per_response": served})
        return 0
    finally:
        stack.stop()
        shutil.rmtree(settings.data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
