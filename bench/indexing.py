"""make bench-indexing: sustained events/s from the broker to the KV layer, against the
ceiling of pipelined raw writes to the same KV server, measured side by side in one run.

1. A private stack (Apache Kafka, redis-server) on free ports; item features written.
2. N synthetic events (with the generator's late and duplicate shares) are produced first.
3. The PyFlink job starts; its events-in counter is sampled, and the sustained rate is
   taken between 10% and 90% of the backlog (start-up excluded).
4. Ceiling: the same KV write pattern (HSET + ZADD per event, SADD per user and batch,
   pipelined in batches of 500, pre-encoded payloads) from 2 processes, without Kafka,
   Flink or parsing.

Besides rates, CPU per event of each part (job: JVM + Python workers; broker; KV server) over
the same 10%–90% window, which holds on a busier or slower machine where rates do not.

Last line: {"bench": "indexing", "events_per_s": …, "ceiling_per_s": …, "ratio": …,
"cpu_us_per_event": {"job": …, "broker": …, "kv": …}}
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import time

import orjson

from usersignals.settings import load_settings
from bench.common import bench_settings, emit, group_cpu_s, log, metric_total
from infra.generator import EventGenerator, ItemCatalog, WorkloadConfig, make_producer, produce, write_features
from infra.stack import Stack


def ceiling_worker(kv_url: str, prefix: str, payloads: list[tuple], batch: int, out) -> None:
    from usersignals.kv import SequenceStore, StoredEvent, connect
    from usersignals.registry import load_registry

    store = SequenceStore(connect(kv_url), load_registry(), prefix)
    events = [StoredEvent(*p) for p in payloads]
    start = time.perf_counter()
    for i in range(0, len(events), batch):
        store.write(events[i:i + batch])
    out.put((len(events), time.perf_counter() - start))


def measure_ceiling(settings, records: list[tuple[bytes, bytes]], processes: int = 2, batch: int = 500) -> float:
    from usersignals.registry import load_registry

    reg = load_registry()
    payloads = []
    for _, value in records:
        ev = orjson.loads(value)
        ds = reg.dataset_for_type(ev["event_type"]).name
        payloads.append((ds, ev["user_id"], ev["event_id"], ev["ts"], value))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    chunk = (len(payloads) + processes - 1) // processes
    procs = [ctx.Process(target=ceiling_worker,
                         args=(settings.kv_url, "ceiling", payloads[i * chunk:(i + 1) * chunk], batch, out))
             for i in range(processes)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    total = sum(n for n, _ in results)
    return total / wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--parallelism", type=int, default=2)
    defaults = load_settings()
    ap.add_argument("--bundle-size", type=int, default=defaults.bundle_size)
    ap.add_argument("--bundle-time-ms", type=int, default=defaults.bundle_time_ms)
    args = ap.parse_args(argv)
    settings = bench_settings("bench-indexing", parallelism=args.parallelism, bundle_size=args.bundle_size,
                              bundle_time_ms=args.bundle_time_ms)
    base = Stack(settings, components=("broker", "kv", "postgres"))  # PostgreSQL: the lake's catalog
    job_stack = Stack(settings, components=("job",))
    try:
        base.start()
        cfg = WorkloadConfig()
        catalog = ItemCatalog(cfg)
        write_features(catalog, settings.kv_url, settings.kv_prefix)
        gen = EventGenerator(cfg, catalog)
        log(f"producing {args.events} events")
        t = time.perf_counter()
        produce(gen, make_producer(settings.broker), settings.events_topic, rate=0, limit=args.events,
                report_every_s=0)
        log(f"produced in {time.perf_counter() - t:.1f}s {gen.counts}")

        job_stack.components = job_stack.define()
        job = job_stack.component("job")
        job.before_start()  # the lake's tables
        job_stack._spawn(job)
        started = time.perf_counter()
        port = settings.job_metrics_port
        samples: list[tuple[float, float]] = []
        parts = {"job": job, "broker": base.component("broker"), "kv": base.component("kv")}
        cpu: list[dict[str, float]] = []
        while True:
            n = metric_total(port, "usersignals_indexer_events_in_total") or 0.0
            samples.append((time.perf_counter(), n))
            cpu.append({name: group_cpu_s(c.proc.pid) for name, c in parts.items()})
            if n >= args.events:
                break
            if job.proc.poll() is not None:
                raise SystemExit(f"the job exited; see {settings.log_dir / 'job.log'}")
            if time.perf_counter() - started > 600:
                raise SystemExit(f"the job indexed only {n:.0f} of {args.events} events in 600s")
            time.sleep(0.25)
        lo, hi = 0.1 * args.events, 0.9 * args.events
        t_lo = next(t for t, n in samples if n >= lo)
        t_hi = next(t for t, n in samples if n >= hi)
        i_lo = next(i for i, (t, n) in enumerate(samples) if t == t_lo)
        i_hi = next(i for i, (t, n) in enumerate(samples) if t == t_hi)
        n_lo, n_hi = samples[i_lo][1], samples[i_hi][1]
        rate = (n_hi - n_lo) / (t_hi - t_lo)
        cpu_per_event = {name: round((cpu[i_hi][name] - cpu[i_lo][name]) / (n_hi - n_lo) * 1e6, 1) for name in parts}
        time.sleep(1.0)
        written = metric_total(port, "usersignals_indexer_kv_writes_total") or 0.0
        dlq = metric_total(port, "usersignals_indexer_dlq_total") or 0.0
        log(f"job: {rate:,.0f} events/s sustained; {written:.0f} written + {dlq:.0f} dead-lettered "
            f"of {args.events}; first record after {samples[0][0] - started:.1f}s; CPU µs/event {cpu_per_event}")
        job_stack.stop()

        records = []
        replay = EventGenerator(cfg, catalog)
        it = replay.records()
        for _ in range(min(args.events, 400_000)):
            records.append(next(it))
        ceiling = measure_ceiling(settings, records)
        log(f"ceiling: {ceiling:,.0f} events/s of pipelined raw writes (2 processes)")
        emit({"bench": "indexing", "events_per_s": round(rate), "ceiling_per_s": round(ceiling),
              "ratio": round(rate / ceiling, 3), "cpu_us_per_event": cpu_per_event, "events": args.events, "parallelism": args.parallelism,
              "bundle_size": args.bundle_size, "bundle_time_ms": args.bundle_time_ms,
              "written": int(written), "dead_lettered": int(dlq)})
        return 0
    finally:
        job_stack.stop()
        base.stop()
        shutil.rmtree(settings.data_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
