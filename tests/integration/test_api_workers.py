"""The API as several worker processes on one port (USERSIGNALS_API_WORKERS=2), started by the
stack: both workers serve; a tenant change reaches every worker; a flooded tenant is held to
its limits summed over the workers while another tenant keeps being served; /metrics sums the
workers; stopping the stack leaves no worker behind."""
import asyncio
import os
import signal
import time
import uuid

import orjson
import pytest
import redis

from bench.common import WorkerConn
from infra.stack import Stack, metric_sum, private_settings
from usersignals.kv import SequenceStore, StoredEvent
from usersignals.registry import DEFAULT_REGISTRY_PATH, load_registry

from .conftest import wait_until

pytestmark = pytest.mark.integration

WORKERS = 2
ADMIN_KEY = f"adm-{uuid.uuid4().hex}"
FLOOD_KEY = f"flood-{uuid.uuid4().hex}"
QUIET_KEY = f"quiet-{uuid.uuid4().hex}"
MAX_RPS = 40.0
MAX_CONCURRENCY = 2     # one in flight per worker
USERS = [f"w{i}" for i in range(10)]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("workers")
    registry_file = data_dir / "registry.toml"  # its own copy: a test edits it and reloads
    registry_file.write_text(DEFAULT_REGISTRY_PATH.read_text())
    settings = private_settings(data_dir, api_workers=WORKERS, registry_path=registry_file)
    stack = Stack(settings, components=("kv", "api"), env={"api": {"USERSIGNALS_ADMIN_KEY": ADMIN_KEY}})
    stack.start()
    registry = load_registry(settings.registry_path)
    store = SequenceStore(redis.Redis(host=settings.host, port=settings.kv_port), registry, settings.kv_prefix)
    now = int(time.time() * 1000)
    store.write([StoredEvent("clicks", u, f"{u}-{n}", now - n * 1000, orjson.dumps(
        {"event_id": f"{u}-{n}", "item_id": f"i{n % 30}", "ts": now - n * 1000, "dwell_ms": 3000}))
        for u in USERS for n in range(40)])
    yield stack
    stack.stop()


async def pinned(stack, per_worker: int, max_tries: int = 200) -> dict[int, list[WorkerConn]]:
    """``per_worker`` connections to each worker (the kernel hands a new one to either)."""
    by_worker: dict[int, list[WorkerConn]] = {}
    for _ in range(max_tries):
        c = await WorkerConn.open(stack.settings.host, stack.settings.api_port)
        conns = by_worker.setdefault(c.worker, [])
        if len(conns) < per_worker:
            conns.append(c)
        else:
            c.close()
        if len(by_worker) == WORKERS and all(len(v) == per_worker for v in by_worker.values()):
            return by_worker
    raise AssertionError(f"connections by worker: { {w: len(v) for w, v in by_worker.items()} }")


async def put_tenant(conn: WorkerConn, name: str, body: dict) -> int:
    status, raw = await conn.request("PUT", f"/v1/tenants/{name}", orjson.dumps(body), {"X-Admin-Key": ADMIN_KEY})
    assert status == 200, raw
    return orjson.loads(raw)["version"]


async def version_seen(conn: WorkerConn, name: str) -> int:
    status, raw = await conn.request("GET", "/v1/tenants", headers={"X-Admin-Key": ADMIN_KEY})
    assert status == 200, raw
    return next((t["version"] for t in orjson.loads(raw)["tenants"] if t["name"] == name), 0)


async def everyone_sees(by_worker, name: str, version: int, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all([await version_seen(conns[0], name) >= version for conns in by_worker.values()]):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not every worker saw version {version} of {name} within {timeout}s")


def test_two_worker_processes_serve_on_one_port(api):
    async def main():
        by_worker = await pinned(api, 1)
        for conns in by_worker.values():
            conns[0].close()
        return set(by_worker)

    workers = asyncio.run(main())
    parent = api.component("api").proc.pid
    assert len(workers) == WORKERS
    for pid in workers:
        assert _stat(pid)[1] == str(parent), (pid, _stat(pid), parent)


def test_a_tenant_change_on_one_worker_reaches_the_others_within_about_a_second(api):
    async def main():
        by_worker = await pinned(api, 1)
        first, *others = by_worker.values()
        version = await put_tenant(first[0], "sync_check", {"sequences": {"clicks": 5}, "api_key": QUIET_KEY})
        started = time.monotonic()
        while not all([await version_seen(c[0], "sync_check") >= version for c in others]):
            await asyncio.sleep(0.02)
            assert time.monotonic() - started < 3.0, "another worker did not see the change within 3 s"
        lag = time.monotonic() - started
        for conns in by_worker.values():
            conns[0].close()
        return lag

    lag = asyncio.run(main())
    assert lag <= 2.0, f"the change took {lag:.2f}s to reach the other worker (sync every 1 s)"


def test_a_registry_reload_on_one_worker_reaches_the_others(api):
    """POST /v1/admin/reload lands on one worker; the others follow the digest it records and
    serve the new dataset too, without a restart."""
    path = api.settings.registry_path
    path.write_text(path.read_text() + '\n[event_types.share]\nid = 6\n\n'
                    '[datasets.shares]\nevent_type = "share"\nretention = 30\n')

    async def datasets(conn: WorkerConn) -> set[str]:
        status, raw = await conn.request("GET", "/v1/datasets")
        assert status == 200, raw
        return {d["name"] for d in orjson.loads(raw)["datasets"]}

    async def main():
        by_worker = await pinned(api, 1)
        first, *others = by_worker.values()
        assert "shares" not in await datasets(others[0][0])
        status, raw = await first[0].request("POST", "/v1/admin/reload", headers={"X-Admin-Key": ADMIN_KEY})
        assert status == 200, raw
        assert "shares" in await datasets(first[0])
        started = time.monotonic()
        while not all(["shares" in await datasets(c[0]) for c in others]):
            await asyncio.sleep(0.05)
            assert time.monotonic() - started < 5.0, "another worker did not follow the reload within 5 s"
        for conns in by_worker.values():
            conns[0].close()
        return time.monotonic() - started

    lag = asyncio.run(main())
    assert lag <= 3.0, f"the reload took {lag:.2f}s to reach the other worker (followed every 1 s)"


def test_a_flooded_tenant_is_held_to_its_limits_across_workers_and_others_are_served(api):
    flood_body = orjson.dumps({"tenant": "flood", "user_ids": USERS})
    quiet_body = orjson.dumps({"tenant": "quiet", "user_ids": USERS[:1]})

    async def main():
        setup = await pinned(api, 1)
        admin = next(iter(setup.values()))[0]
        await put_tenant(admin, "flood", {"sequences": {"clicks": 20}, "max_concurrency": MAX_CONCURRENCY,
                                          "max_rps": MAX_RPS, "timeout_ms": 10_000, "api_key": FLOOD_KEY})
        version = await put_tenant(admin, "quiet", {"sequences": {"clicks": 20}, "timeout_ms": 10_000,
                                                    "api_key": QUIET_KEY})
        await everyone_sees(setup, "quiet", version)
        for cs in setup.values():
            cs[0].close()
        # opened now (an idle keep-alive connection is closed after 5 s): per worker 6 flooding,
        # 2 quiet, one sampling /metrics
        by_worker = await pinned(api, 9)
        conns = [c for cs in by_worker.values() for c in cs]

        flooders = [c for cs in by_worker.values() for c in cs[:6]]
        quiet = [c for cs in by_worker.values() for c in cs[6:8]]
        sampler = next(iter(by_worker.values()))[8]
        flood_results: list[tuple[int, bytes]] = []
        quiet_results: list[tuple[int, float]] = []
        in_flight: list[float] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + 3.0

        async def flood(c):
            while loop.time() < end:
                status, raw = await c.request("POST", "/v1/features", flood_body, {"X-API-Key": FLOOD_KEY})
                flood_results.append((status, raw[:200]))

        async def calm(c):
            while loop.time() < end:
                sent = loop.time()
                status, _ = await c.request("POST", "/v1/features", quiet_body, {"X-API-Key": QUIET_KEY})
                quiet_results.append((status, loop.time() - sent))
                await asyncio.sleep(0.02)

        async def sample():
            while loop.time() < end:
                _, raw = await sampler.request("GET", "/metrics")
                in_flight.append(metric_sum(raw.decode(), "usersignals_api_tenant_in_flight", tenant="flood"))
                await asyncio.sleep(0.05)

        await asyncio.gather(*map(flood, flooders), *map(calm, quiet), sample())
        elapsed = loop.time() - start
        _, raw = await sampler.request("GET", "/metrics")
        for c in conns:
            c.close()
        return flood_results, quiet_results, in_flight, elapsed, raw.decode()

    flood_results, quiet_results, in_flight, elapsed, text = asyncio.run(main())
    codes = [s for s, _ in flood_results]
    admitted, refused = codes.count(200), codes.count(429)
    # (a) the flood gets 429s and no more than its limits summed over the workers: each worker
    # admits max_rps/N a second after a burst of as much (both buckets were full at the start)
    assert refused and admitted + refused == len(codes), sorted(set(codes))
    assert admitted <= MAX_RPS * elapsed + MAX_RPS + 2, (admitted, elapsed)
    assert admitted >= 0.5 * MAX_RPS * elapsed, (admitted, elapsed)   # and it is not starved
    reasons = {b"requests/s" in raw for s, raw in flood_results if s == 429}
    assert reasons == {True, False}, "the flood should meet both limits: the rate and the requests in flight"
    assert in_flight and max(in_flight) <= MAX_CONCURRENCY, in_flight
    # (b) the quiet tenant is served meanwhile, promptly
    statuses = [s for s, _ in quiet_results]
    assert len(statuses) >= 20 and set(statuses) == {200}, sorted(set(statuses))
    latencies = sorted(lat for _, lat in quiet_results)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    assert p95 < 0.25, f"quiet tenant p95 {p95 * 1000:.0f} ms during the flood"
    # (c) /metrics, answered by one worker, counts what both served
    assert metric_sum(text, "usersignals_api_tenant_requests_total", tenant="flood", outcome="ok") == admitted
    assert metric_sum(text, "usersignals_api_tenant_requests_total", tenant="flood", outcome="throttled") == refused
    assert metric_sum(text, "usersignals_api_tenant_requests_total", tenant="quiet", outcome="ok") == len(quiet_results)
    assert metric_sum(text, "usersignals_api_requests_total", route="/v1/features", status="429") == refused


def test_a_restart_after_the_api_parent_died_takes_its_orphaned_workers_along(api):
    c = api.component("api")
    old = c.proc.pid
    orphans = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _stat(pid)[1:2] == [str(old)]]
    shared = next(filter(None, (_environ(pid).get("PROMETHEUS_MULTIPROC_DIR") for pid in orphans)), None)
    os.kill(old, signal.SIGKILL)   # the parent only: its workers would keep the port
    c.proc.wait()

    def restarted():
        api.watch_once()
        return c.proc.pid != old and c.proc.poll() is None and c.ready()

    wait_until(restarted, timeout=30, message="the API restarted")
    assert orphans and not [p for p in orphans if _alive(p)]
    assert shared and not os.path.exists(shared), "the killed run's metrics directory is left"


def test_stopping_the_stack_leaves_no_worker_behind(api):
    parent = api.component("api").proc.pid
    group = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _stat(pid)[2:3] == [str(parent)]]
    children = [pid for pid in group if _stat(pid)[1:2] == [str(parent)]]
    assert len(children) >= WORKERS, group   # the workers (and multiprocessing's resource tracker)
    shared = next(filter(None, (_environ(pid).get("PROMETHEUS_MULTIPROC_DIR") for pid in children)), None)
    assert shared and os.path.isdir(shared)
    api.stop()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in group):
        time.sleep(0.1)
    assert not [p for p in group if _alive(p)], "processes of the API left after stop"
    assert not os.path.exists(shared), "the run's metrics directory was not removed"


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command: state, ppid, pgid, ... ([] if the process is gone)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"])


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)
