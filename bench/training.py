"""Training-examples benchmark: the lake path of ``python -m batch training-examples`` at the
local stack's real volume, on a real local Spark + Iceberg (PostgreSQL catalog).

    make bench-training           (python -m bench.training [--events N] [--span-s S])

``--events`` (150k) events from the workload generator (``infra.generator.history``: 10k Zipf
users, so a few heavy users hold most of the events, the shape that made labels x events
unaffordable) are spread over ``--span-s`` (150 s: the generator at 1,000 events/s for 2.5
minutes) of one day and appended to ``raw_events``, with 2% of them replayed (duplicates the
job must drop); ``item_features`` gets two versions of every item, one before the events and
one in the middle of them, so the as-of join has a choice to make. Generation is not timed.

Timed, in one run: the reference, a scan of the day's ``raw_events`` (with the job's lookback)
and its deduplication, counted; then the job itself as the CLI runs it (the day's relevant
engagements as labels, every dataset at its retention, the table's partition overwritten and
the Parquet export written). CPU is the process group's (the driver JVM and its Python
workers), per 1,000 labels.
Last line: ``{"bench": "training", "events", "labels", "examples_rows", "wall_s",
"cpu_s_per_1k_labels", "scan_dedup_s", ...}``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import time

import pyarrow as pa

from bench.common import emit, group_cpu_s, log, run_on_a_lake

DUPLICATE_SHARE = 0.02


def _raw_events(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """The generator's rows as ``raw_events`` (as the streaming job appends them), every 50th
    one replayed with a later ingestion time."""
    replayed = rows[::int(1 / DUPLICATE_SHARE)]
    out = {f.name: [] for f in schema}
    for k, r in enumerate(rows + replayed):
        for name, value in (("event_id", r["event_id"]), ("user_id", r["user_id"]), ("event_type", r["event_type"]),
                            ("item_id", r["item_id"]), ("event_time", r["event_time"]), ("surface", r["surface"]),
                            ("dwell_ms", r["dwell_ms"]), ("query", r["query"]), ("kafka_partition", 0),
                            ("kafka_offset", k), ("ingested_at", r["event_time"] + (50_000 if k < len(rows)
                                                                                     else 5_000_000))):
            out[name].append(value)
    for c in ("event_time", "ingested_at"):
        out[c] = pa.array(out[c], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return pa.Table.from_pydict(out, schema=schema)


def _item_features(catalog_items: dict, versions: list[dt.datetime], schema: pa.Schema) -> pa.Table:
    """Every item's features once per moment of ``versions`` (popularity differs per version)."""
    out = {f.name: [] for f in schema}
    for n, at in enumerate(versions):
        for item_id, f in catalog_items.items():
            row = {"item_id": item_id, **f, "updated_at": at}
            row["popularity"] = min(1.0, f["popularity"] * (1 + n / 10))
            for name in out:
                out[name].append(row.get(name))
    return pa.Table.from_pydict(out, schema=schema)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Training-examples benchmark")
    p.add_argument("--events", type=int, default=150_000, help="generated events (before replays)")
    p.add_argument("--span-s", type=float, default=150.0, help="seconds of the day the events are spread over")
    args = p.parse_args(argv)
    return run_on_a_lake("training", lambda settings: _run(args, settings))


def _run(args, settings) -> int:
    from batch import transforms as T
    from batch.__main__ import make_io
    from batch.session import spark_session
    from batch.training import training_examples
    from iceberg_schemas.migrate import migrate
    from infra.generator import ItemCatalog, WorkloadConfig, history
    from usersignals import lake
    from usersignals.registry import load_registry

    registry = load_registry(settings.registry_path)
    catalog = lake.load_catalog(settings)
    migrate(catalog, settings, registry)
    day = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    start = dt.datetime.combine(day, dt.time(12), dt.timezone.utc)
    end = start + dt.timedelta(seconds=args.span_s)
    started = time.monotonic()
    cfg = WorkloadConfig()
    items = ItemCatalog(cfg)
    rows = history(cfg, args.events, int(start.timestamp() * 1000), int(end.timestamp() * 1000), items, registry)
    raw = catalog.load_table(lake.table_id(settings, lake.RAW_EVENTS))
    raw.append(_raw_events(rows, raw.schema().as_arrow()))
    feats = catalog.load_table(lake.table_id(settings, lake.ITEM_FEATURES))
    feats.append(_item_features(items.features(), [start - dt.timedelta(days=1), start + (end - start) / 2],
                                feats.schema().as_arrow()))
    log(f"generated {len(rows)} events (+{len(rows) // int(1 / DUPLICATE_SHARE)} replays) and 2 versions of "
        f"{len(items.item_ids)} items in {time.monotonic() - started:.0f}s")

    spark = spark_session(settings, "bench-training", {"spark.driver.memory": "4g"})
    group = os.getpgid(0)   # this process, the driver JVM it started and the JVM's Python workers
    try:
        io = make_io(spark, settings)
        day_start, day_end = T.day_bounds(day)
        lookback = dt.timedelta(days=30)   # the job's default --lookback-days
        started, cpu = time.monotonic(), group_cpu_s(group)
        events = T.dedup_events(io.read(lake.RAW_EVENTS).where(T.in_range(day_start - lookback, day_end))).count()
        scan_dedup_s, scan_cpu_s = time.monotonic() - started, group_cpu_s(group) - cpu
        log(f"reference: scan + dedup of {events} events in {scan_dedup_s:.1f}s")

        export = (settings.data_dir / "exports" / "training_examples").resolve().as_uri()
        started, cpu = time.monotonic(), group_cpu_s(group)
        figures = training_examples(io, registry, day, export_dir=export)
        wall_s, cpu_s = time.monotonic() - started, group_cpu_s(group) - cpu
        log(f"training_examples: {figures} in {wall_s:.1f}s ({cpu_s:.0f} CPU s)")
    finally:
        spark.stop()
    labels = figures["examples"]
    emit({"bench": "training", "events": events, "labels": labels, "examples_rows": figures["built"],
          "wall_s": round(wall_s, 1), "cpu_s_per_1k_labels": round(cpu_s / labels * 1000, 2) if labels else None,
          "cpu_s": round(cpu_s, 1), "scan_dedup_s": round(scan_dedup_s, 1), "scan_dedup_cpu_s": round(scan_cpu_s, 1),
          "span_s": args.span_s, "users": cfg.users, "items": cfg.items})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
