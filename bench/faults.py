"""Fault injection: kill -9 each part of the running stack under load; nothing acknowledged is lost.

    make test-faults          (= .venv/bin/python -m bench.faults)

A private local stack runs Apache Kafka (its log on disk), the KV server with its append-only
file on, PostgreSQL (the lake's catalog), and the whole pipeline: the indexing job (which writes
the lake through Iceberg's Flink sink), trimmer, serving API. An idempotent
producer sends events (with out-of-order timestamps and re-sent duplicates, acks=all) and
records what the broker acknowledged; a reader asks the
API for sequences all along and checks every response for duplicates. Meanwhile, in turn:

    kill -9 a Python worker of the job      kill -9 the whole job (driver, JVM, workers)
    kill -9 the KV server                   kill -9 the broker
    kill -9 PostgreSQL (the lake's catalog) kill -9 the serving API

The stack's supervisor restarts each; the next fault waits until the stack serves again.
When the producer stops, the harness counts independently (its own ledger of acks, read
back through the KV store and scans of the Iceberg tables) that every acknowledged event is in
the KV layer (if it is among its user's newest N of its type) and in raw_events and
enriched_events, each record exactly once. The last line is the JSON contract:

    {"bench": "faults", "produced", "acked", "found_kv", "found_lake", "lost", "duplicates_served",
     "duplicates_lake_raw", "duplicates_lake_enriched", ...}

Exit status 1 if anything acknowledged was lost, a response held a duplicate or the lake one.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import orjson

from bench.common import bench_settings, emit, group_pids, log, metric_total, percentile

TENANT = "faults"
TENANT_KEY = "faults-dev-key"
FAULTS = ("job-worker", "job", "kv", "broker", "postgres", "api")


# --- pure logic (unit-tested) ----------------------------------------------------------
@dataclass(frozen=True)
class Acked:
    event_id: str
    user_id: str
    dataset: str
    ts: int


def expected_in_kv(acked: Iterable[Acked], retention: Mapping[str, int]) -> dict[tuple[str, str], set[str]]:
    """Per (user, dataset), the acked events the KV layer must hold: the newest N by event time.

    The KV layer orders by (ts, event_id) like this, so a tie at the N-th place is decided the
    same way on both sides."""
    groups: dict[tuple[str, str], list[Acked]] = collections.defaultdict(list)
    for a in acked:
        groups[(a.user_id, a.dataset)].append(a)
    out = {}
    for key, events in groups.items():
        events.sort(key=lambda a: (a.ts, a.event_id), reverse=True)
        out[key] = {a.event_id for a in events[:retention[key[1]]]}
    return out


def response_problems(body: dict) -> tuple[int, int]:
    """(duplicate events, out-of-order pairs) in a /v1/features JSON response."""
    dups = misordered = 0
    for user in body.get("users", []):
        for events in user.get("sequences", {}).values():
            ids = [e["event_id"] for e in events]
            dups += len(ids) - len(set(ids))
            ts = [e["ts"] for e in events]
            misordered += sum(1 for a, b in zip(ts, ts[1:]) if a < b)
    return dups, misordered


# --- the moving parts --------------------------------------------------------------------
@dataclass
class Ledger:
    """What the producer sent and what the broker acknowledged, by event id."""

    sent: collections.Counter = field(default_factory=collections.Counter)
    acked: dict[str, Acked] = field(default_factory=dict)
    ack_count: collections.Counter = field(default_factory=collections.Counter)
    first_sent_at: dict[str, float] = field(default_factory=dict)  # monotonic seconds
    acked_at: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def produce(settings, registry, ledger: Ledger, rate: float, users: int, stop: threading.Event, seed: int) -> None:
    from infra.generator import ItemCatalog, WorkloadConfig, make_producer

    rng = random.Random(seed)
    catalog = ItemCatalog(WorkloadConfig(seed=seed))
    types = sorted(registry.event_types)
    run = uuid.uuid4().hex[:6]
    # acks=all; a record is retried for up to 2 minutes across a broker restart.
    p = make_producer(settings.broker, acks="all", **{"message.timeout.ms": 120_000})

    def delivered(err, msg, a: Acked) -> None:
        with ledger.lock:
            if err is None:
                ledger.acked[a.event_id] = a
                ledger.ack_count[a.event_id] += 1
                ledger.acked_at.setdefault(a.event_id, time.monotonic())
            else:
                ledger.failed += 1

    n, start = 0, time.monotonic()
    last: tuple[bytes, Acked] | None = None
    while not stop.is_set():
        if last is not None and rng.random() < 0.02:  # the same record again, as a retrying client would
            value, a = last
        else:
            etype = rng.choice(types)
            user = f"f{run}-{rng.randrange(users)}"
            ts = int(time.time() * 1000) - (rng.randrange(30_000) if rng.random() < 0.1 else 0)  # 10% late
            ev = {"event_id": f"f{run}-{n}", "user_id": user, "event_type": etype,
                  "item_id": catalog.pick(rng, None), "ts": ts, "surface": "homefeed"}
            if etype in ("click", "closeup"):
                ev["dwell_ms"] = rng.randrange(500, 30_000)
            value = orjson.dumps(ev)
            a = Acked(ev["event_id"], user, registry.dataset_for_type(etype).name, ts)
        last = value, a
        while True:
            try:
                p.produce(settings.events_topic, key=a.user_id.encode(), value=value,
                          on_delivery=lambda err, msg, a=a: delivered(err, msg, a))
                break
            except BufferError:
                p.poll(0.05)
        with ledger.lock:
            ledger.sent[a.event_id] += 1
            ledger.first_sent_at.setdefault(a.event_id, time.monotonic())
        n += 1
        p.poll(0)
        ahead = n / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    remaining = p.flush(150)
    if remaining:
        log(f"producer: {remaining} records neither acknowledged nor failed after 150 s")


@dataclass
class ReaderStats:
    responses: int = 0
    duplicates: int = 0
    misordered: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)


def read(settings, ledger: Ledger, stats: ReaderStats, rate: float, stop: threading.Event, seed: int) -> None:
    """Ask the API for random acked users' sequences, ``rate`` requests/s; check every response."""
    import httpx

    rng = random.Random(seed)
    url = f"http://{settings.host}:{settings.api_port}/v1/features"
    with httpx.Client(timeout=3.0, headers={"X-API-Key": TENANT_KEY}) as client:
        while not stop.is_set():
            time.sleep(1 / rate)
            with ledger.lock:
                if not ledger.acked:
                    continue
                users = list({a.user_id for a in rng.sample(list(ledger.acked.values())[-5000:],
                                                             min(5, len(ledger.acked)))})
            started = time.perf_counter()
            try:
                r = client.post(url, json={"tenant": TENANT, "user_ids": users})
            except httpx.HTTPError as exc:
                stats.errors[type(exc).__name__] += 1
                continue
            if r.status_code != 200:
                stats.errors[f"http_{r.status_code}"] += 1
                continue
            stats.latencies.append(time.perf_counter() - started)
            stats.responses += 1
            dups, misordered = response_problems(r.json())
            stats.duplicates += dups
            stats.misordered += misordered


def job_workers(job_pid: int) -> list[int]:
    """PIDs of the job's Python UDF workers (in the job's process group, not the driver)."""
    pids = []
    for pid in group_pids(job_pid):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if pid != job_pid and b"python" in cmd and b"fn_execution" in cmd:
            pids.append(pid)
    return pids


def inject(stack, fault: str) -> str:
    """kill -9 one part; say what was killed."""
    if fault == "job-worker":
        job = stack.component("job")
        workers = job_workers(job.proc.pid)
        if not workers:
            return "no Python worker found"
        os.kill(workers[0], signal.SIGKILL)
        return f"Python worker pid {workers[0]} of {len(workers)}"
    c = stack.component(fault)
    os.killpg(c.proc.pid, signal.SIGKILL)  # the process and its children (the job's JVM and workers)
    return f"{fault} process group {c.proc.pid}"


def wait_ready(stack, names: Iterable[str], timeout_s: float) -> float:
    """Seconds until every named component runs and passes its health check (the supervisor restarts)."""
    started = time.monotonic()
    pending = list(names)
    while pending and time.monotonic() - started < timeout_s:
        c = stack.component(pending[0])
        if c.proc is not None and c.proc.poll() is None and c.ready():
            pending.pop(0)
        else:
            time.sleep(0.5)
    if pending:
        raise RuntimeError(f"{pending} not back within {timeout_s:.0f}s after the fault")
    return time.monotonic() - started


def verify_kv(settings, registry, expected: dict[tuple[str, str], set[str]]) -> set[str]:
    """The expected event ids that the KV layer holds (read with the store's own read path)."""
    from usersignals.kv import SequenceStore, connect, decode_all

    store = SequenceStore(connect(settings.kv_url), registry, settings.kv_prefix)
    found: set[str] = set()
    for (user, dataset), ids in expected.items():
        rows = store.read(user, {dataset: registry.datasets[dataset].retention})[dataset]
        found |= ids & {e["event_id"] for e in decode_all(rows)}
    return found


def lake_counts(settings, prefix: str, table_name: str = "raw_events") -> collections.Counter:
    """Rows per event id in an Iceberg table (raw_events, enriched_events), for this run's users."""
    from pyiceberg.expressions import StartsWith

    from usersignals import lake

    table = lake.load_catalog(settings).load_table(lake.table_id(settings, table_name))
    ids = table.scan(row_filter=StartsWith("user_id", prefix), selected_fields=("event_id",)).to_arrow()
    return collections.Counter(ids.column("event_id").to_pylist())


def in_topic(settings, topic: str, event_ids: set[str], timeout_s: float = 180.0, idle_s: float = 8.0) -> set[str]:
    """Which of ``event_ids`` the broker still holds in ``topic``, reading it from the start until
    nothing more comes for ``idle_s``."""
    from confluent_kafka import Consumer, TopicPartition

    if not event_ids:
        return set()
    c = Consumer({"bootstrap.servers": settings.broker, "group.id": f"faults-audit-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "log_level": 0})
    c.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    found: set[str] = set()
    deadline = time.monotonic() + timeout_s
    last_record = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last_record < idle_s and found != event_ids:
        for m in c.consume(5000, 0.5):
            if m.error() is not None:
                continue
            last_record = time.monotonic()
            try:
                eid = orjson.loads(m.value()).get("event_id")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if eid in event_ids:
                found.add(eid)
    c.close()
    return found


def describe_timing(sent_at: float, acked_at: float, kills: list[tuple[str, float]]) -> str:
    """When an event was first sent and acked, relative to the nearest fault before its ack."""
    before = [(name, t) for name, t in kills if t <= acked_at]
    if not before:
        return f"sent, acked {acked_at - sent_at:.2f} s later, before any fault"
    name, t = before[-1]
    return f"sent {sent_at - t:+.2f} s, acked {acked_at - t:+.2f} s from the kill of {name}"


def job_counters(settings) -> dict[str, float | None]:
    """The indexing job's record counters since it last started: read, rejected, written.

    ``read - rejected - written`` above 0 once traffic has stopped means events the job
    accepted and holds unwritten, or dropped with a killed or failed worker (replays count
    on both sides)."""
    read, rejected, written = (metric_total(settings.job_metrics_port, f"usersignals_indexer_{m}_total",
                                            settings.host) for m in ("events_in", "dlq", "kv_writes"))
    unwritten = read - rejected - written if None not in (read, rejected, written) else None
    return {"read": read, "rejected": rejected, "written": written, "unwritten": unwritten}


def run(rate: float = 100.0, steady_s: float = 12.0, users: int = 3000, read_rps: float = 40.0,
        faults: Iterable[str] = FAULTS, settle_timeout_s: float = 180.0, seed: int = 11) -> dict:
    import httpx

    from infra.generator import ItemCatalog, WorkloadConfig, write_features
    from infra.stack import Stack
    from usersignals.registry import load_registry

    registry = load_registry()
    settings = bench_settings("faults", checkpoint_interval_ms=2000)
    stack = Stack(settings, components=("broker", "kv", "postgres", "job", "trimmer", "api"))
    ledger, stats = Ledger(), ReaderStats()
    stop_produce, stop_read, stop_watch = threading.Event(), threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    try:
        stack.start()
        write_features(ItemCatalog(WorkloadConfig(seed=seed)), settings.kv_url, settings.kv_prefix)
        base = f"http://{settings.host}:{settings.api_port}"
        tenant = {"sequences": {d.name: d.retention for d in registry.realtime_datasets().values()},
                  "filters": {"dedup_items": False}, "max_concurrency": 64, "timeout_ms": 2000,
                  "api_key": TENANT_KEY, "format": "json"}
        httpx.put(f"{base}/v1/tenants/{TENANT}", json=tenant,
                  headers={"X-Admin-Key": settings.admin_key}).raise_for_status()
        time.sleep(1.5)  # the API's workers pick the tenant up from the KV layer

        def supervise() -> None:
            while not stop_watch.is_set():
                stack.watch_once()
                time.sleep(0.25)

        threads = [threading.Thread(target=supervise, daemon=True),
                   threading.Thread(target=produce, args=(settings, registry, ledger, rate, users, stop_produce, seed),
                                    daemon=True),
                   threading.Thread(target=read, args=(settings, ledger, stats, read_rps, stop_read, seed),
                                    daemon=True)]
        for t in threads:
            t.start()
        time.sleep(steady_s)
        recovery: dict[str, float] = {}
        everything = [c.name for c in stack.components]
        kills: list[tuple[str, float]] = []
        for fault in faults:
            kills.append((fault, time.monotonic()))
            what = inject(stack, fault)
            log(f"kill -9 {what}")
            time.sleep(1.0)  # the supervisor sees it die
            recovery[fault] = round(wait_ready(stack, everything, 240), 1)
            log(f"{fault}: stack whole again after {recovery[fault]} s; running {steady_s:.0f} s")
            time.sleep(steady_s)
        stop_produce.set()
        threads[1].join(200)
        with ledger.lock:
            acked = dict(ledger.acked)
            sent, ack_count, failed = collections.Counter(ledger.sent), collections.Counter(ledger.ack_count), ledger.failed
        log(f"produced {sum(sent.values())} records ({len(sent)} events), acked {len(acked)} events, "
            f"{failed} delivery failures; waiting for KV and lake")

        retention = {d.name: d.retention for d in registry.realtime_datasets().values()}
        expected = expected_in_kv(acked.values(), retention)
        n_expected = sum(len(v) for v in expected.values())
        prefix = next(iter(acked.values())).user_id.split("-")[0] + "-" if acked else "none-"
        deadline = time.monotonic() + settle_timeout_s
        found_kv: set[str] = set()
        waiting = expected  # the (user, dataset) groups not yet complete in KV
        lake: collections.Counter = collections.Counter()
        enriched: collections.Counter = collections.Counter()
        while time.monotonic() < deadline:
            found_kv |= verify_kv(settings, registry, waiting)
            waiting = {k: ids for k, ids in waiting.items() if not ids <= found_kv}
            lake = lake_counts(settings, prefix)
            enriched = lake_counts(settings, prefix, "enriched_events")
            if not waiting and all(e in lake and e in enriched for e in acked):
                break
            time.sleep(3)
        found_kv = verify_kv(settings, registry, expected)  # the count: one full pass at the end
        time.sleep(2)  # a last look with the reader after everything landed
        stop_read.set()
        threads[2].join(10)

        missing_kv = {e for ids in expected.values() for e in ids} - found_kv
        missing_lake = (set(acked) - set(lake)) | (set(acked) - set(enriched))
        lost = missing_kv | missing_lake
        # Whose loss: an acked event the broker no longer holds was lost by the broker; one it
        # holds but KV or lake lacks was lost by the platform.
        kept_by_broker = in_topic(settings, settings.events_topic, lost)
        # Where the platform's losses stopped: the job produces an event to the enriched topic
        # only after its KV write succeeded, and a rejected one to the DLQ; neither means the
        # job never wrote it (not read, or read and never flushed: see the job's counters).
        platform_lost = kept_by_broker & missing_kv
        trail = {}
        if platform_lost:
            trail = {"in_enriched_topic": len(in_topic(settings, settings.enriched_topic, platform_lost)),
                     "in_dlq": len(in_topic(settings, settings.dlq_topic, platform_lost)),
                     "job_counters": job_counters(settings)}
            log(f"platform losses missing from KV: {sorted(platform_lost)}; trail {trail}")
        # Rows beyond what was sent (the producer re-sends some events: each record lands once).
        dup_lake = sum(max(0, n - sent[e]) for e, n in lake.items())
        dup_enriched = sum(max(0, n - sent[e]) for e, n in enriched.items())
        if lost:
            log(f"LOST {len(lost)}: e.g. {sorted(lost)[:5]} (missing in KV {len(missing_kv)}, in lake "
                f"{len(missing_lake)}; {len(lost) - len(kept_by_broker)} of them acked but no longer held by the broker)")
            for e in sorted(lost, key=lambda e: ledger.acked_at[e])[:20]:
                log(f"  {e}: {describe_timing(ledger.first_sent_at[e], ledger.acked_at[e], kills)}")
        lat = [x * 1000 for x in stats.latencies]
        result = {
            "bench": "faults",
            "produced": sum(sent.values()),
            "acked": len(acked),
            "found_kv": len(found_kv),
            "found_lake": len(set(acked) & set(lake)),
            "found_lake_enriched": len(set(acked) & set(enriched)),
            "lost": len(lost),
            "duplicates_served": stats.duplicates,
            "lost_by_broker": len(lost - kept_by_broker),
            "lost_by_platform": len(kept_by_broker),
            "expected_kv": n_expected,
            "resent": sum(sent.values()) - len(sent),
            "delivery_failures": failed,
            "duplicates_lake": dup_lake + dup_enriched,
            "duplicates_lake_raw": dup_lake,
            "duplicates_lake_enriched": dup_enriched,
            "responses": stats.responses,
            "misordered_served": stats.misordered,
            "serve_errors": dict(stats.errors),
            "serve_p99_ms": round(percentile(lat, 99), 1) if lat else None,
            "recovery_s": recovery,
            "acks_beyond_one": sum(1 for e, n in ack_count.items() if n > sent[e]),
            "idempotent_producers": True,   # every producer of the platform and the harness's
        }
        if trail:
            result["platform_loss_trail"] = trail
        return result
    finally:
        stop_produce.set()
        stop_read.set()
        stop_watch.set()
        for t in threads:
            t.join(5)
        stack.stop()
        if os.environ.get("USERSIGNALS_KEEP_DATA") == "1":
            log(f"data kept in {settings.data_dir}")
        else:
            shutil.rmtree(settings.data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=100.0, help="events per second produced")
    p.add_argument("--steady", type=float, default=12.0, help="seconds of traffic before and after each fault")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--read-rps", type=float, default=40.0)
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, from {','.join(FAULTS)}")
    args = p.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        p.error(f"unknown faults {sorted(unknown)}; choose from {','.join(FAULTS)}")
    result = run(rate=args.rate, steady_s=args.steady, users=args.users, read_rps=args.read_rps, faults=faults)
    emit(result)
    ok = result["lost"] == 0 and result["duplicates_served"] == 0 and result["duplicates_lake"] == 0
    return 0 if ok and result["acked"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
