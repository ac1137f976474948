"""Retraining benchmark: ALS train + evaluate on 1M interactions (events) of planted structure.

    make bench-retrain            (python -m bench.retrain [--events N])

1M events from the workload generator (10k Zipf users with 1-3 interest categories, 50k
items in 32 categories) over 29 days go into ``enriched_events``; the job trains on 28 days
and evaluates on the last (recall@10 / NDCG@10 of ALS, of the sequence model - each user's
time-decayed mean of their sequence's ALS item embeddings - and of the popularity baseline,
side by side on the same users in one run). Spark local[2]; MLlib uses native BLAS when
Debian's OpenBLAS is installed (``make install`` does) and says so.
Last line: ``{"bench": "retrain", "interactions", "train_s", "recall_at_10", "ndcg_at_10",
"baseline_recall_at_10", ..., "seq_recall_at_10", "seq_ndcg_at_10"}``; ``train_s`` is the
whole job (ALS, sequences, evaluation, recording).
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from dataclasses import replace

import pyarrow as pa

from bench.common import emit, log, run_on_a_lake


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Retraining benchmark")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--seq-half-life-h", type=float, default=None,
                   help="the sequence model's half-life (default: TrainParams')")
    args = p.parse_args(argv)
    return run_on_a_lake("retrain", lambda settings: _run(args, settings))


def _run(args, settings) -> int:
    from batch.__main__ import make_io
    from batch.retrain import TrainParams, retrain
    from batch.session import spark_session
    from iceberg_schemas.migrate import migrate
    from infra.generator import WorkloadConfig, history
    from usersignals import lake
    from usersignals.registry import load_registry

    catalog = lake.load_catalog(settings)
    migrate(catalog, settings, load_registry())
    holdout = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    end = dt.datetime.combine(holdout + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    started = time.monotonic()
    rows = history(WorkloadConfig(), args.events, int((end - dt.timedelta(days=29)).timestamp() * 1000),
                   int(end.timestamp() * 1000))
    table = catalog.load_table(lake.table_id(settings, lake.ENRICHED_EVENTS))
    schema = table.schema().as_arrow()
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    for c in ("event_time", "indexed_at"):
        cols[c] = pa.array(cols[c], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    table.append(pa.Table.from_pydict(cols, schema=schema))
    log(f"generated {len(rows)} events in {time.monotonic() - started:.0f}s")

    spark = spark_session(settings, "bench-retrain", {"spark.driver.memory": "4g"})
    try:
        jvm = spark.sparkContext._jvm
        blas = jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName()
        log(f"MLlib BLAS: {blas}")
        io = make_io(spark, settings)
        started = time.monotonic()
        params = TrainParams(train_days=28, k=10)
        if args.seq_half_life_h is not None:
            params = replace(params, seq_half_life_h=args.seq_half_life_h)
        out = retrain(io, load_registry(), holdout, params)
        train_s = time.monotonic() - started
    finally:
        spark.stop()
    # interactions = the engagement events trained on; user_item_pairs = what ALS factorises.
    emit({"bench": "retrain", "interactions": out["training_events"], "user_item_pairs": out["interactions"],
          "train_s": round(train_s, 1), "recall_at_10": round(out["recall_at_k"], 4),
          "ndcg_at_10": round(out["ndcg_at_k"], 4), "baseline_recall_at_10": round(out["baseline_recall_at_k"], 4),
          "baseline_ndcg_at_10": round(out["baseline_ndcg_at_k"], 4), "eval_users": out["eval_users"],
          "users": out["users"], "items": out["items"], "promoted": out["promoted"], "blas": blas,
          "seq_recall_at_10": round(out["seq_recall_at_k"], 4), "seq_ndcg_at_10": round(out["seq_ndcg_at_k"], 4),
          "seq_users": out["seq_users"], "seq_half_life_h": params.seq_half_life_h})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
