"""Command line of the offline jobs (what spark-submit and the DAGs run)::

    python -m batch daily --day 2026-11-22 [--event-types click,view] [--no-kv]
    python -m batch bootstrap --datasets clicks --days 30 --as-of 2026-11-22T00:00:00+00:00
    python -m batch backfill-enrichment --enrichment item_popularity --days 30 --as-of 2026-11-22T00:00:00+00:00
    python -m batch select --experiment dwell50 --dataset closeups --rules last,dwell --n 50 --days 30 --as-of ...
    python -m batch select-cleanup --as-of 2026-11-22T00:00:00+00:00
    python -m batch maintenance --as-of 2026-11-22T03:30:00+00:00 [--tables raw_events] [--expire-days 5]
    python -m batch maintenance-figures --as-of 2026-11-22T03:30:00+00:00   (what that run dropped, per table)
    python -m batch delete-user <user_id> [--requested-by NAME] [--reason TEXT]
    python -m batch delete-user --pending      (complete the erasures the API recorded)
    python -m batch parity --as-of 2026-11-22T00:00:00+00:00 --sample 200 [--watermark-minutes 10] [--threshold 0.01]
    python -m batch publish-features
    python -m batch training-examples --day D [--source lake|served] [--tenant T] [--label-types click,repin]
                                      [--labels-table NAME] [--export-dir DIR | --no-export]
    python -m batch skew --day D [--tenant T] [--event-types click] [--sample 2000] [--lookback-days 90]
    python -m batch retrain --as-of 2026-11-22T00:00:00+00:00 | --holdout-day D [--train-days 28] [--rank R] ...
    python -m batch publish-model [--version V | --as-of T]      python -m batch model-rollback

or ``spark-submit batch/submit.py <same arguments>``. Settings come from ``USERSIGNALS_*``.
Every job that reads a time window takes its end (``--as-of``, ``--day``, ``--holdout-day``)
from the caller (the DAG's data interval), never the wall clock: a re-run or a backfill of
last month computes what that month's run did.
Prints the job's figures as one JSON line last; exits non-zero on failure.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys

from usersignals.registry import load_registry
from usersignals.settings import Settings, load_settings


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def instant(value: str) -> dt.datetime:
    """An ISO 8601 moment with its UTC offset (what Airflow's ``ts`` filter renders)."""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 date-time, e.g. 2026-11-22T00:00:00+00:00")
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no UTC offset; write e.g. {value}+00:00")
    return moment


AS_OF_HELP = "end of the window: ISO 8601 with offset (the DAG passes its data interval's end)"


class JobParser(argparse.ArgumentParser):
    """A job's parser; ``moments``: options of which the job needs at least one (its moment)."""
    moments: tuple[str, ...] = ()

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        if self.moments and all(getattr(ns, o.lstrip("-").replace("-", "_")) is None for o in self.moments):
            self.error(f"one of {' or '.join(self.moments)} is required: the run's moment")
        return ns, rest


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m batch", description="usersignals offline jobs on Spark + Iceberg")
    sub = p.add_subparsers(dest="job", required=True, parser_class=JobParser)
    d = sub.add_parser("daily", help="re-enrich one day from raw events; repair the KV layer")
    d.add_argument("--day", type=dt.date.fromisoformat, required=True, help="UTC day, YYYY-MM-DD")
    d.add_argument("--event-types", type=_csv, default=None, help="comma-separated (default: all)")
    d.add_argument("--no-kv", action="store_true", help="do not repair the KV layer")
    b = sub.add_parser("bootstrap", help="build datasets' sequences from the last N days into the KV layer")
    b.add_argument("--datasets", type=_csv, required=True)
    b.add_argument("--days", type=int, required=True)
    b.add_argument("--as-of", type=instant, required=True, help=AS_OF_HELP)
    e = sub.add_parser("backfill-enrichment", help="add an enrichment's fields to indexed events (lake + KV)")
    e.add_argument("--enrichment", required=True)
    e.add_argument("--days", type=int, required=True)
    e.add_argument("--as-of", type=instant, required=True, help=AS_OF_HELP)
    s = sub.add_parser("select", help="compare event-selection rules on next-day engagement; serve a "
                                      "registered experiment's selections")
    s.add_argument("--experiment", required=True, help="names the report rows (and, when registered in "
                                                       "[experiments], its served datasets exp_<name>_<rule>)")
    s.add_argument("--dataset", required=True)
    rules = s.add_mutually_exclusive_group(required=True)
    rules.add_argument("--rules", type=_csv, help="comma-separated registry [selection_rules]; 'last' (the "
                                                  "baseline) is always added")
    rules.add_argument("--rule", type=lambda v: [v], dest="rules", help="one rule (same as --rules RULE)")
    s.add_argument("--n", type=int, required=True, help="events selected per user: the k of recall@k")
    s.add_argument("--days", type=int, default=30, help="days of events before the scored day")
    s.add_argument("--as-of", type=instant, required=True,
                   help=AS_OF_HELP + "; rules are scored on the last UTC day complete at it, the window "
                        "is the days before that day")
    s.add_argument("--chart", default=None, help="SVG chart path (default: <data_dir>/reports/selection/"
                                                 "<experiment>/<eval day>.svg)")
    s.add_argument("--no-kv", action="store_true")
    sc = sub.add_parser("select-cleanup", help="remove ended experiments' KV datasets and selected_sequences rows")
    sc.add_argument("--as-of", type=instant, required=True, help="experiments ending at or before it are removed")
    m = sub.add_parser("maintenance", help="drop expired partitions, compact files, rewrite manifests, "
                                           "expire snapshots")
    m.add_argument("--tables", type=_csv, default=None,
                   help="comma-separated (default: every table of iceberg_schemas.tables)")
    m.add_argument("--as-of", type=instant, required=True,
                   help="the run's moment: retention and snapshot expiry count back from it (ISO 8601 with offset)")
    m.add_argument("--expire-days", type=int, default=5)
    m.add_argument("--retain-last", type=int, default=50)
    mf = sub.add_parser("maintenance-figures", help="what the maintenance run as of --as-of dropped per table, "
                                                    "read back from the tables' properties (no Spark)")
    mf.add_argument("--as-of", type=instant, required=True, help="the maintenance run's --as-of")
    mf.add_argument("--tables", type=_csv, default=None, help="the run's --tables (default: every table)")
    u = sub.add_parser("delete-user", help="erase a user from the KV layer and every lake table (audited)")
    u.add_argument("user_id", nargs="?", help="the user to erase (or --pending)")
    u.add_argument("--pending", action="store_true", help="complete the erasures the API recorded")
    u.add_argument("--requested-by", default="operator", help="who asked, for the audit row")
    u.add_argument("--reason", default=None, help="why, for the audit row")
    q = sub.add_parser("parity", help="compare sampled users' KV sequences with the lake")
    q.add_argument("--as-of", type=instant, required=True, help=AS_OF_HELP)
    q.add_argument("--sample", type=int, default=200)
    q.add_argument("--watermark-minutes", type=int, default=10,
                   help="compare as of this many minutes before --as-of (lets the lake catch up)")
    q.add_argument("--threshold", type=float, default=0.01, help="fail above this mismatch rate")
    q.add_argument("--seed", type=int, default=None)
    sub.add_parser("publish-features", help="latest item features from the lake to the KV layer")
    t = sub.add_parser("training-examples", help="one day's point-in-time training examples (lake or served) "
                                                 "into training_examples and a Parquet export")
    t.add_argument("--day", type=dt.date.fromisoformat, required=True, help="UTC day of the labels, YYYY-MM-DD")
    t.add_argument("--source", choices=["lake", "served"], default="lake",
                   help="lake: rebuilt from raw events as of each label; served: the logged served features "
                        "labelled by what followed")
    t.add_argument("--tenant", default=None, help="sequence mix of this tenant (default: every dataset at its "
                                                  "retention); required with --source served")
    t.add_argument("--label-types", type=_csv, default=None,
                   help="event types that are labels (default: the registry's relevant types)")
    t.add_argument("--labels-table", default=None,
                   help="lake source: labels from this lake table (user_id, ts, label[, example_id])")
    t.add_argument("--lookback-days", type=int, default=30, help="lake source: oldest event, days before ts")
    t.add_argument("--label-window-minutes", type=int, default=30,
                   help="served source: engagements this long after the request are its label")
    t.add_argument("--export-dir", default=None,
                   help="Parquet export root (default: <data_dir>/exports/training_examples; a cluster "
                        "gives an object-store URI)")
    t.add_argument("--no-export", action="store_true", help="write the table only")
    k = sub.add_parser("skew", help="compare a sample of a day's served features with the lake's rebuild of "
                                    "the same requests, per tenant, dataset and feature, into feature_skew")
    k.add_argument("--day", type=dt.date.fromisoformat, required=True, help="UTC day of the served requests")
    k.add_argument("--tenant", default=None, help="only this tenant (default: every tenant)")
    k.add_argument("--event-types", type=_csv, default=None,
                   help="only the datasets of these event types (default: every dataset a tenant reads)")
    k.add_argument("--sample", type=int, default=2000, help="requests per tenant (by hash of request_id)")
    k.add_argument("--lookback-days", type=int, default=90, help="oldest event rebuilt, days before the request")
    r = sub.add_parser("retrain", help="train ALS embeddings, evaluate on a holdout day, gate")
    r.moments = ("--as-of", "--holdout-day")
    r.add_argument("--as-of", type=instant, default=None,
                   help=AS_OF_HELP + "; names the model version (a re-run replaces it) and, without "
                        "--holdout-day, evaluates the last UTC day complete at it")
    r.add_argument("--holdout-day", type=dt.date.fromisoformat, default=None,
                   help="UTC day to evaluate on; training uses the days before it (without --as-of: "
                        "as of the day's end)")
    r.add_argument("--train-days", type=int, default=28)
    r.add_argument("--rank", type=int, default=None, help="default: the registry's model.embedding_dim")
    r.add_argument("--iterations", type=int, default=10)
    r.add_argument("--reg", type=float, default=1.0)
    r.add_argument("--alpha", type=float, default=1.0)
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--margin", type=float, default=0.02, help="relative improvement needed to promote")
    r.add_argument("--seq-half-life-h", type=float, default=72.0,
                   help="the sequence model: an event this many hours older weighs half as much")
    r.add_argument("--seq-length", type=int, default=None,
                   help="the sequence model: events per dataset in a sequence (default: each dataset's retention)")
    pm = sub.add_parser("publish-model", help="make a promoted model's item embeddings current in the KV layer")
    pm_which = pm.add_mutually_exclusive_group()
    pm_which.add_argument("--version", default=None, help="default: the newest promoted version")
    pm_which.add_argument("--as-of", type=instant, default=None,
                          help="the version of the retraining run as of this moment, if promoted and the "
                               "newest promoted (else nothing is published)")
    sub.add_parser("model-rollback", help="switch the KV layer back to the previous embedding version")
    return p


def make_io(spark, settings: Settings):
    from batch.jobs import LakeIO
    from batch.kv_load import load_features_into_kv, load_into_kv

    return LakeIO(spark, settings.lake_catalog, settings.lake_namespace,
                  to_kv=lambda df: load_into_kv(df, settings),
                  features_to_kv=lambda df: load_features_into_kv(df, settings),
                  metrics_dir=settings.data_dir / "metrics", kv=settings)


def run(args: argparse.Namespace, settings: Settings, spark=None) -> dict:
    from batch import jobs
    from batch.session import spark_session

    if args.job == "model-rollback":  # no Spark needed
        from usersignals import models
        from usersignals.kv import connect

        return {"current": models.rollback(connect(settings), settings.kv_prefix)}
    registry = load_registry(settings.registry_path)
    if args.job == "maintenance-figures":  # no Spark: pyiceberg reads the tables' properties
        from iceberg_schemas.tables import table_defs
        from usersignals import lake

        defs = table_defs(registry)
        return jobs.maintenance_dropped(lake.load_catalog(settings), settings.lake_namespace,
                                        args.tables or list(defs), defs, args.as_of)
    own = spark is None
    spark = spark or spark_session(settings, f"usersignals-{args.job}")
    try:
        io = make_io(spark, settings)
        if args.job == "daily":
            return jobs.daily_reenrich(io, registry, args.day, args.event_types, repair_kv=not args.no_kv)
        if args.job == "bootstrap":
            return jobs.bootstrap(io, registry, args.datasets, args.days, as_of=args.as_of)
        if args.job == "backfill-enrichment":
            return jobs.backfill_enrichment(io, registry, args.enrichment, args.days, as_of=args.as_of)
        if args.job == "select":
            return jobs.select_experiment(io, registry, args.experiment, args.dataset, args.rules, args.n,
                                          args.days, as_of=args.as_of, to_kv=not args.no_kv, chart_path=args.chart)
        if args.job == "select-cleanup":
            from usersignals.kv import SequenceStore, connect

            store = SequenceStore(connect(settings), registry, settings.kv_prefix)
            return jobs.select_cleanup(io, registry, as_of=args.as_of, store=store)
        if args.job == "maintenance":
            from iceberg_schemas.tables import table_defs

            defs = table_defs(registry)
            return jobs.maintenance(io, args.tables or list(defs), args.expire_days, args.retain_last,
                                    now=args.as_of, defs=defs)
        if args.job == "delete-user":
            return delete_users(io, args, settings, registry)
        if args.job == "parity":
            from usersignals.kv import SequenceStore, connect

            store = SequenceStore(connect(settings), registry, settings.kv_prefix)
            wm = args.as_of - dt.timedelta(minutes=args.watermark_minutes)
            return jobs.parity(io, registry, store, args.sample, wm, args.threshold, seed=args.seed)
        if args.job == "publish-features":
            return jobs.publish_features(io)
        if args.job == "training-examples":
            from batch.training import training_examples

            default_export = (settings.data_dir / "exports" / "training_examples").resolve().as_uri()
            export = None if args.no_export else (args.export_dir or default_export)
            return training_examples(io, registry, args.day, source=args.source, tenant=args.tenant,
                                     label_types=args.label_types, labels_table=args.labels_table,
                                     lookback_days=args.lookback_days,
                                     label_window_minutes=args.label_window_minutes, export_dir=export)
        if args.job == "skew":
            from batch.skew import feature_skew

            return feature_skew(io, registry, args.day, tenant=args.tenant, event_types=args.event_types,
                                sample=args.sample, lookback_days=args.lookback_days)
        if args.job == "retrain":
            from batch.retrain import TrainParams, retrain

            return retrain(io, registry, args.holdout_day, TrainParams(
                train_days=args.train_days, rank=args.rank, iterations=args.iterations, reg=args.reg, alpha=args.alpha,
                k=args.k, margin=args.margin, seq_half_life_h=args.seq_half_life_h, seq_length=args.seq_length),
                as_of=args.as_of)
        if args.job == "publish-model":
            from batch.retrain import publish
            from usersignals.kv import connect

            return publish(io, registry, connect(settings), settings.kv_prefix, args.version, as_of=args.as_of)
        raise ValueError(f"unknown job {args.job}")
    finally:
        if own:
            spark.stop()


def delete_users(io, args: argparse.Namespace, settings: Settings, registry) -> dict:
    """One user now (KV, then lake), or every request the API recorded (its KV part done)."""
    from batch import jobs
    from iceberg_schemas.tables import table_defs
    from usersignals import aggregates
    from usersignals.kv import ErasureRequests, SequenceStore, connect

    if bool(args.user_id) == args.pending:
        raise SystemExit("delete-user: give a user id or --pending, not both nor neither")
    client = connect(settings)
    defs = table_defs(registry)
    requests = ErasureRequests(settings.kv_prefix)
    if args.user_id:
        now = dt.datetime.now(dt.timezone.utc)
        kv_removed = SequenceStore(client, registry, settings.kv_prefix).delete_user(args.user_id)
        kv_removed["kv.aggregates"] = aggregates.delete_user(client, settings.kv_prefix, args.user_id)
        return jobs.delete_user(io, defs, args.user_id, now, args.requested_by, args.reason, kv_removed,
                                kv_deleted_at=now)
    done = 0
    for user_id, (raw, req) in requests.pending(client).items():
        jobs.delete_user(io, defs, user_id, dt.datetime.fromisoformat(req["requested_at"]), req["requested_by"],
                         req.get("reason"), req.get("kv_removed"),
                         kv_deleted_at=dt.datetime.fromisoformat(req["kv_deleted_at"]),
                         request_id=req["request_id"])
        requests.complete(client, user_id, raw)
        done += 1
    return {"completed": done, "still_pending": len(requests.pending(client))}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    figures = run(args, load_settings())
    print(json.dumps({"job": args.job, **figures}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
