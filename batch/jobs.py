"""The offline jobs: read tables → ``batch.transforms`` → write tables and the KV layer.

Sources and sinks come in through ``LakeIO`` (tables by name, partition overwrite, replace by
condition, KV loading), so a job is a function of its inputs; ``batch.__main__`` wires the real
ones for spark-submit and the DAGs. A job that replaces rows does it in one commit per table
(never a DELETE and then an append). Every job returns its figures (rows read, written,
repaired, …) and reports progress through ``batch.progress``.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from batch import transforms as T
from batch.progress import Progress
from iceberg_schemas.tables import DELETIONS, TableDef, partition_name
from usersignals import lake
from usersignals.events import decode_stored
from usersignals.registry import BASELINE_RULE, EXPERIMENT_NAME, Registry

log = logging.getLogger("usersignals.batch")


@dataclass
class LakeIO:
    """Where jobs read and write. ``to_kv`` loads stored-event rows and returns the count."""
    spark: object
    catalog: str
    namespace: str
    to_kv: Callable[[DataFrame], int]
    features_to_kv: Callable[[DataFrame], int] | None = None
    metrics_dir: object = None
    kv: object = None      # Settings: the KV store the executors write to (kv_url, kv_cluster)
    written: list[tuple[str, int]] = field(default_factory=list)

    def name(self, table: str) -> str:
        return f"{self.catalog}.{self.namespace}.{table}"

    def read(self, table: str) -> DataFrame:
        return self.spark.table(self.name(table))

    def overwrite_partitions(self, table: str, df: DataFrame) -> None:
        """Replace exactly the partitions present in ``df`` (idempotent re-runs)."""
        target = self.read(table).columns
        df.select(*target).sortWithinPartitions("user_id").writeTo(self.name(table)).overwritePartitions()

    def append(self, table: str, df: DataFrame) -> None:
        df.select(*self.read(table).columns).writeTo(self.name(table)).append()

    def replace(self, table: str, df: DataFrame, where: Column, within: Column | None = None) -> None:
        """Replace the rows of ``table`` matching ``where`` with ``df`` in one commit: a reader sees
        the old rows or the new ones, never neither, and a run that fails before the commit leaves
        the old rows (an empty ``df`` deletes them). Conditions are Column expressions
        (``F.col(c) == F.lit(v)``), never SQL text built from names.

        Iceberg replaces whole data files: ``where`` must hold for all or none of a file's rows,
        which a condition on the partition columns does. When it cuts across files (a column
        that is not a partition, in a table that compaction merges), give ``within``: a condition
        on partitions that contains it; that partition's rows outside ``where`` are written back
        unchanged in the same commit, as of the snapshot they were read from: a commit to the
        table since (another job's rows in that partition) fails this one, which a retry redoes,
        instead of being overwritten."""
        writer = None
        if within is not None:
            snapshot = self.current_snapshot(table)
            read = self.read(table) if snapshot is None else \
                self.spark.read.option("snapshot-id", snapshot).table(self.name(table))
            kept = read.where(within & ~F.coalesce(where, F.lit(False)))
            df, where = df.select(*kept.columns).unionByName(kept), within
            writer = df.select(*kept.columns).writeTo(self.name(table)).option("isolation-level", "serializable")
            if snapshot is not None:
                writer = writer.option("validate-from-snapshot-id", str(snapshot))
        (writer or df.select(*self.read(table).columns).writeTo(self.name(table))).overwrite(where)

    def current_snapshot(self, table: str) -> int | None:
        """The id of the table's current snapshot (None: nothing committed yet)."""
        rows = self.spark.sql(f"SELECT snapshot_id FROM {self.name(table)}.history WHERE is_current_ancestor "
                              "ORDER BY made_current_at DESC LIMIT 1").collect()
        return int(rows[0]["snapshot_id"]) if rows else None

    def feature_fields(self) -> tuple[str, ...]:
        return lake.feature_columns(self.read(lake.ENRICHED_EVENTS).columns)


def window_before(as_of: dt.datetime, days: int) -> tuple[dt.datetime, dt.datetime]:
    """[as_of - days, as_of): the events a job run as of ``as_of`` reads. ``as_of`` is the run's
    (the DAG's data interval end), never the wall clock, so a re-run or a backfill of a past run
    reads exactly the window that run read."""
    if as_of.tzinfo is None:
        raise ValueError(f"as_of {as_of.isoformat()} has no UTC offset; pass an aware datetime")
    if days <= 0:
        raise ValueError(f"days must be a positive number of days, got {days!r}")
    return as_of - dt.timedelta(days=days), as_of


def _types_filter(event_types):
    return F.col("event_type").isin(list(event_types)) if event_types else F.lit(True)


# --- item features → KV -----------------------------------------------------------------

def publish_features(io: LakeIO) -> dict[str, int]:
    """Latest item features from the lake to the KV layer, where the stream enriches from."""
    p = Progress("publish_features", io.metrics_dir)
    feats = T.latest_features(io.read(lake.ITEM_FEATURES))
    n = io.features_to_kv(feats)
    p.stage("published", n)
    return p.done()


# --- daily re-enrichment -----------------------------------------------------------------

def daily_reenrich(io: LakeIO, registry: Registry, day: dt.date, event_types: list[str] | None = None,
                   repair_kv: bool = True) -> dict[str, int]:
    """Recompute one day's enriched events from raw events and current features.

    Deduplicates, overwrites that day's partitions of ``enriched_events`` (idempotent), and
    rewrites in the KV layer the events the stream missed or enriched differently.
    """
    p = Progress("daily_reenrich", io.metrics_dir, day=str(day), event_types=",".join(event_types or ["*"]))
    start, end = T.day_bounds(day)
    fields = io.feature_fields()
    raw = io.read(lake.RAW_EVENTS).where(T.in_range(start, end) & _types_filter(event_types))
    deduped = T.dedup_events(raw)
    recomputed = T.enrich(deduped, T.latest_features(io.read(lake.ITEM_FEATURES)), registry, fields, "daily") \
        .localCheckpoint(eager=True)
    total = recomputed.count()
    p.stage("recomputed", total)
    streamed = io.read(lake.ENRICHED_EVENTS).where(T.in_range(start, end) & _types_filter(event_types))
    # Eager checkpoint: the comparison must see the streamed rows before the overwrite replaces them.
    repair = T.needs_repair(recomputed, streamed, fields).localCheckpoint(eager=True)
    reasons = {r["reason"]: r["n"] for r in repair.groupBy("reason").agg(F.count("*").alias("n")).collect()}
    p.stage("compared", int(sum(reasons.values())), missing=reasons.get("missing", 0),
            mis_enriched=reasons.get("mis_enriched", 0))
    io.overwrite_partitions(lake.ENRICHED_EVENTS, recomputed)
    p.stage("overwritten", total)
    p.figures["missing"] = int(reasons.get("missing", 0))
    p.figures["mis_enriched"] = int(reasons.get("mis_enriched", 0))
    if repair_kv:
        p.stage("kv_repaired", io.to_kv(T.stored_payload(repair, fields)))
    return p.done()


# --- bootstrap a dataset ---------------------------------------------------------------

def bootstrap(io: LakeIO, registry: Registry, datasets: list[str], days: int, *,
              as_of: dt.datetime) -> dict[str, int]:
    """Build datasets' sequences from the ``days`` days of raw events before ``as_of``, straight into KV."""
    # An experiment's datasets are built by `batch select`, from its rules, not from raw events.
    realtime = registry.realtime_datasets()
    unknown = sorted(set(datasets) - set(realtime))
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; real-time datasets: {sorted(realtime)}")
    p = Progress("bootstrap", io.metrics_dir, datasets=",".join(datasets), days=str(days),
                 as_of=as_of.isoformat())
    types = [registry.datasets[d].event_type for d in datasets]
    raw = io.read(lake.RAW_EVENTS).where(T.in_range(*window_before(as_of, days)) & _types_filter(types))
    events = T.dedup_events(raw).withColumn("dataset", T.dataset_of(registry)).where(F.col("dataset").isin(datasets))
    kept = T.last_n(events, {d: registry.datasets[d].retention for d in datasets})
    fields = io.feature_fields()
    enriched = T.enrich(kept.drop("dataset", "rank"), T.latest_features(io.read(lake.ITEM_FEATURES)), registry,
                        fields, "bootstrap").where(F.col("dataset").isin(datasets))
    n = io.to_kv(T.stored_payload(enriched, fields))
    p.stage("loaded", n)
    return p.done()


# --- backfill a new enrichment -----------------------------------------------------------

def backfill_enrichment(io: LakeIO, registry: Registry, enrichment: str, days: int, *,
                        as_of: dt.datetime) -> dict[str, int]:
    """Add an enrichment's fields to already indexed events of the datasets that use it:
    new columns (schema change, no rewrite), the ``days`` days of partitions before ``as_of`` rewritten
    with values, and each user's retained sequence rewritten in the KV layer."""
    if enrichment not in registry.enrichments:
        raise ValueError(f"unknown enrichment {enrichment!r}; registered: {sorted(registry.enrichments)}")
    e = registry.enrichments[enrichment]
    datasets = [d.name for d in registry.realtime_datasets().values() if enrichment in d.enrichments]
    if not datasets:
        raise ValueError(f"no dataset uses enrichment {enrichment!r}: add it to a dataset in the registry first")
    p = Progress("backfill_enrichment", io.metrics_dir, enrichment=enrichment, days=str(days),
                 as_of=as_of.isoformat())
    have = set(io.read(lake.ENRICHED_EVENTS).columns)
    feat_schema = {f.name: f.dataType.simpleString() for f in io.read(lake.ITEM_FEATURES).schema.fields}
    for f in e.fields:
        if f not in feat_schema:
            raise ValueError(f"enrichment field {f!r} is not a column of {lake.ITEM_FEATURES}")
        if f not in have:  # a schema change: metadata only, existing files are not rewritten
            io.spark.sql(f"ALTER TABLE {io.name(lake.ENRICHED_EVENTS)} ADD COLUMN {f} {feat_schema[f]}")
            p.stage(f"added_column_{f}")
    fields = io.feature_fields()
    events = io.read(lake.ENRICHED_EVENTS).where(T.in_range(*window_before(as_of, days))
                                                 & F.col("dataset").isin(datasets))
    feats = T.latest_features(io.read(lake.ITEM_FEATURES)).select(
        "item_id", *[F.col(f).alias(f"_n_{f}") for f in e.fields])
    updated = events.join(feats, "item_id", "left")
    for f in e.fields:
        updated = updated.withColumn(f, F.col(f"_n_{f}")).drop(f"_n_{f}")
    updated = updated.withColumn("enriched_by", F.lit("backfill")).localCheckpoint(eager=True)
    n = updated.count()
    io.overwrite_partitions(lake.ENRICHED_EVENTS, updated)
    p.stage("lake_rows", n)
    kept = T.last_n(updated, {d: registry.datasets[d].retention for d in datasets}).drop("rank")
    p.stage("kv_rows", io.to_kv(T.stored_payload(kept, fields)))
    return p.done()


# --- event-selection experiments ----------------------------------------------------------

@dataclass(frozen=True)
class SelectionWindow:
    """A comparison's days: rules select from [start, end) and are scored on the engagement of
    ``eval_day``, the day after the window, which starts at ``end``."""
    start: dt.datetime
    end: dt.datetime

    @classmethod
    def before(cls, as_of: dt.datetime, days: int) -> "SelectionWindow":
        """The scored day is the last UTC day complete at ``as_of`` (as retraining's holdout day:
        for a run as of 2026-11-22T00:00 or 2026-11-22T18:00, 2026-11-21); the window is the
        ``days`` days before it, so every event selected is strictly before the scored day."""
        if as_of.tzinfo is None:
            raise ValueError(f"as_of {as_of.isoformat()} has no UTC offset; pass an aware datetime")
        scored = (as_of.astimezone(dt.timezone.utc) - dt.timedelta(days=1)).date()
        start, end = window_before(T.day_bounds(scored)[0], days)
        return cls(start, end)

    @property
    def eval_day(self) -> dt.date:
        return self.end.date()


def select_experiment(io: LakeIO, registry: Registry, experiment: str, dataset: str, rules: list[str], n: int,
                      days: int, *, as_of: dt.datetime, to_kv: bool = True, chart_path: str | None = None,
                      now: dt.datetime | None = None) -> dict:
    """Compare event-selection rules on one window and, for a registered experiment, serve them.

    Every rule (the registry's ``[selection_rules]``; the baseline ``last`` is always included)
    picks each user's ``n`` events of ``dataset`` among those of the ``days`` days before the scored
    day (the last UTC day complete at ``as_of``, ``SelectionWindow``); each rule's picks are scored
    against that day's engagement
    (``T.selection_metrics``) into ``selection_reports`` (this window's rows replaced) and an SVG
    chart. When ``experiment`` is registered (``[experiments.<name>]``, not ended), its rules'
    picks also replace its partition of ``selected_sequences`` and its KV datasets
    ``exp_<experiment>_<rule>`` (loaded, then trimmed: retention n, TTL until its end)."""
    from batch import selection
    from batch.retrain import relevant_items

    now = now or dt.datetime.now(dt.timezone.utc)
    if dataset not in registry.realtime_datasets():
        raise ValueError(f"unknown dataset {dataset!r}; rules select from a real-time dataset: "
                         f"{sorted(registry.realtime_datasets())}")
    if not EXPERIMENT_NAME.fullmatch(experiment):
        raise ValueError(f"experiment name {experiment!r}: use lowercase letters, digits and _ (at most 40)")
    if n <= 0:
        raise ValueError(f"n must be a positive number of events, got {n!r}")
    served = registry.experiments.get(experiment)
    # A registered experiment's run replaces all of its datasets: its own rules always run with it.
    rules = list(dict.fromkeys([BASELINE_RULE, *rules, *(served.rules if served is not None else ())]))
    functions = {r: selection.resolve(registry, r) for r in rules}  # unknown or unimportable: fails here
    if served is not None:
        if (served.dataset, served.n) != (dataset, n):
            raise ValueError(f"experiment {experiment!r} is registered with dataset {served.dataset!r} and n "
                             f"{served.n}; this run asks for {dataset!r} and {n}: use the registered values")
        if served.ended(as_of):
            raise ValueError(f"experiment {experiment!r} ended on {served.ends} (before {as_of.isoformat()}); "
                             f"its data is removed by python -m batch select-cleanup")
    window = SelectionWindow.before(as_of, days)
    p = Progress("select_experiment", io.metrics_dir, experiment=experiment, rules=",".join(rules),
                 as_of=as_of.isoformat())
    events = T.dedup_events(io.read(lake.ENRICHED_EVENTS).where(
        T.in_range(window.start, window.end) & (F.col("dataset") == dataset)), "indexed_at")
    # The item embeddings known when the window ended: a re-run later scores the same information.
    emb = T.latest_features(io.read(lake.ITEM_FEATURES).where(F.col("updated_at") < F.lit(window.end))) \
        .select("item_id", F.col("embedding").alias("_emb"))
    events = (events.drop(*[c for c in ("embedding",) if c in events.columns])
              .join(emb, "item_id", "left").withColumnRenamed("_emb", "embedding")).localCheckpoint(eager=True)
    p.stage("window_events", events.count())

    picks, seconds = [], {}
    for rule in rules:
        started = time.monotonic()
        chosen = T.select_events(events, functions[rule], n, rule).withColumn("rule", F.lit(rule)) \
            .localCheckpoint(eager=True)
        seconds[rule] = time.monotonic() - started
        picks.append(chosen)
        p.stage(f"selected.{rule}", chosen.count())
    selected = picks[0]
    for more in picks[1:]:
        selected = selected.unionByName(more)

    relevant = relevant_items(io.read(lake.ENRICHED_EVENTS), window.eval_day, registry.relevant_types())
    users = events.select("user_id").distinct().join(relevant.select("user_id").distinct(), "user_id")
    measured = {r["rule"]: r for r in T.selection_metrics(
        selected.select("rule", "user_id", "rank", "item_id"), relevant, users, n).collect()}
    n_users = users.count()
    report = selection_report(experiment, dataset, n, window, rules, measured, n_users, seconds, now)
    # This window's rows of the experiment replaced; its other windows' rows (same partition) stay.
    this_experiment = F.col("experiment") == F.lit(experiment)
    io.replace(lake.SELECTION_REPORTS, io.spark.createDataFrame(report, SELECTION_REPORTS_SCHEMA),
               this_experiment & (F.col("window_end") == F.lit(window.end)), within=this_experiment)
    p.stage("users_evaluated", n_users)
    chart = write_selection_chart(report, chart_path or _default_chart_path(io, experiment, window))
    p.stage("chart", None, path=chart)

    if served is not None:
        kept = selected.where(F.col("rule").isin(list(served.rules))).withColumn(
            "dataset", F.concat(F.lit(f"exp_{experiment}_"), F.col("rule")))
        rows = kept.select(F.lit(experiment).alias("experiment"), "dataset", "user_id", "rank", "event_id",
                           "item_id", "event_time", "score", F.lit(now).alias("created_at"), "rule")
        # Replace the whole partition: a re-run with fewer rules leaves no stale rule behind.
        io.replace(lake.SELECTED_SEQUENCES, rows, F.col("experiment") == F.lit(experiment))
        p.stage("selected_sequences", rows.count())
        if to_kv:
            p.stage("kv_rows", _load_experiment_kv(io, registry, served, kept))
    out = p.done()
    out.update({"experiment": experiment, "dataset": dataset, "k": n, "window_start": window.start.isoformat(),
                "window_end": window.end.isoformat(), "eval_day": str(window.eval_day), "chart": chart,
                "served": served is not None,
                "rules": {r[1]: {"recall_at_k": r[8], "ndcg_at_k": r[9], "recall_lift": r[11], "ndcg_lift": r[12],
                                 "users_evaluated": r[7]} for r in report}})
    return out


SELECTION_REPORTS_SCHEMA = ("experiment string, rule string, dataset string, k int, window_start timestamp, "
                            "window_end timestamp, eval_day string, users_evaluated bigint, recall_at_k double, "
                            "ndcg_at_k double, baseline_rule string, recall_lift double, ndcg_lift double, "
                            "select_seconds double, run_at timestamp")


def selection_report(experiment: str, dataset: str, k: int, window: SelectionWindow, rules: list[str],
                     measured: Mapping[str, object], users: int, seconds: Mapping[str, float],
                     now: dt.datetime) -> list[tuple]:
    """The rows of ``selection_reports``, one per rule in ``rules`` order; a rule without a
    measure (no user to evaluate) scores 0. Lifts are relative to the baseline (NULL when it scores 0)."""
    def score(rule):
        m = measured.get(rule)
        return (float(m["recall_at_k"]), float(m["ndcg_at_k"])) if m is not None else (0.0, 0.0)

    base = score(BASELINE_RULE)
    rows = []
    for rule in rules:
        recall, ndcg = score(rule)
        rows.append((experiment, rule, dataset, k, window.start, window.end, str(window.eval_day), users, recall,
                     ndcg, BASELINE_RULE, recall / base[0] - 1 if base[0] else None,
                     ndcg / base[1] - 1 if base[1] else None, round(seconds.get(rule, 0.0), 3), now))
    return rows


def _default_chart_path(io: LakeIO, experiment: str, window: SelectionWindow) -> str:
    root = io.kv.data_dir / "reports" if io.kv is not None else Path("reports")
    return str(root / "selection" / experiment / f"{window.eval_day}.svg")


def write_selection_chart(report: list[tuple], path: str) -> str:
    """recall@k and NDCG@k per rule as an SVG bar chart at ``path`` (a local file of the driver)."""
    from batch.charts import grouped_bars

    first = report[0]
    svg = grouped_bars(f"Selection rules of {first[0]}: next-day engagement of k={first[3]} events",
                       [r[1] for r in report],
                       {f"recall@{first[3]}": [r[8] for r in report], f"NDCG@{first[3]}": [r[9] for r in report]},
                       subtitle=f"{first[2]}, window {first[4]:%Y-%m-%d} to {first[5]:%Y-%m-%d} (excl.), "
                                f"scored on {first[6]}, {first[7]} users")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(svg)
    return str(target)


def _load_experiment_kv(io: LakeIO, registry: Registry, experiment, kept: DataFrame) -> int:
    """Replace the experiment's KV datasets with ``kept`` and trim them (retention n, TTL to its end)."""
    from usersignals.kv import SequenceStore, connect

    store = SequenceStore(connect(io.kv), registry, io.kv.kv_prefix)
    for rule in experiment.rules:  # a user the new window does not select keeps nothing from the old one
        store.delete_dataset(experiment.dataset_of(rule))
    fields = io.feature_fields()
    n = io.to_kv(T.stored_payload(kept.select(*T.EVENT_COLUMNS, "dataset", *fields), fields))
    store.trim_all()
    # The TTL set here too: a trimmer whose registry does not know these datasets yet drops their
    # dirty marks, and then neither trims nor expires them.
    now = time.time()
    for rule in experiment.rules:
        ds = registry.datasets[experiment.dataset_of(rule)]
        store.expire_dataset(ds.name, ds.ttl_seconds(now))
    return n


def select_cleanup(io: LakeIO, registry: Registry, *, as_of: dt.datetime, store=None) -> dict:
    """Remove what ended experiments left: registered experiments whose ``ends`` is at or before
    ``as_of``, and experiments with rows in ``selected_sequences`` that the registry no longer
    names. Deletes their KV datasets and their ``selected_sequences`` partition (their
    ``selection_reports`` rows stay: they are the result). Idempotent."""
    p = Progress("select_cleanup", io.metrics_dir, as_of=as_of.isoformat())
    on_lake = {}
    for r in io.read(lake.SELECTED_SEQUENCES).select("experiment", "dataset").distinct().collect():
        on_lake.setdefault(r["experiment"], set()).add(r["dataset"])
    ended = {name: {e.dataset_of(r) for r in e.rules} for name, e in registry.experiments.items() if e.ended(as_of)}
    for name, datasets in on_lake.items():
        if name not in registry.experiments:
            ended.setdefault(name, set()).update(datasets)
        elif name in ended:
            ended[name].update(datasets)
    removed_keys = removed_rows = 0
    for name, datasets in sorted(ended.items()):
        keys = sum(store.delete_dataset(d) for d in sorted(datasets)) if store is not None else 0
        rows = io.read(lake.SELECTED_SEQUENCES).where(F.col("experiment") == name).count()
        if rows:  # nothing in its place: the partition is deleted (a name from the lake, never SQL text)
            io.replace(lake.SELECTED_SEQUENCES, io.read(lake.SELECTED_SEQUENCES).limit(0),
                       F.col("experiment") == F.lit(name))
        p.stage(f"{name}.kv_keys", keys, datasets=sorted(datasets))
        p.stage(f"{name}.lake_rows", rows)
        removed_keys += keys
        removed_rows += rows
    p.figures["kv_keys"] = removed_keys
    p.figures["lake_rows"] = removed_rows
    out = p.done()
    # Still in the registry: their names stay valid (served empty) until the entry is deleted.
    out.update({"ended": sorted(ended), "still_registered": sorted(n for n in ended if n in registry.experiments)})
    return out


# --- table maintenance ---------------------------------------------------------------------

def maintenance(io: LakeIO, tables: list[str], expire_older_than_days: int = 5, retain_last: int = 50,
                now: dt.datetime | None = None, defs: Mapping[str, TableDef] | None = None) -> dict[str, int]:
    """Per table: drop the day partitions past its retention (``TableDef.retention_days``),
    compact small files and the files with row-level deletes (a user's erasure), rewrite
    manifests, expire old snapshots (which deletes the files no snapshot kept needs)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    p = Progress("maintenance", io.metrics_dir, tables=",".join(tables))
    older = (now - dt.timedelta(days=expire_older_than_days)).strftime("%Y-%m-%d %H:%M:%S")
    for t in tables:
        ident = f"{io.namespace}.{t}"
        cat = io.catalog
        tdef = (defs or {}).get(t)
        if tdef is not None and tdef.retention_days is not None:
            rows, files, cutoff = drop_expired_partitions(io, tdef, now)
            p.stage(f"{t}.expired_rows", rows, before=cutoff.isoformat(), retention_days=tdef.retention_days)
            p.stage(f"{t}.expired_files", files)
            record_dropped(io, t, now, rows, files)
        # delete-file-threshold 1: a data file with any row deleted is rewritten without those rows.
        r = io.spark.sql(f"CALL {cat}.system.rewrite_data_files(table => '{ident}', options => map("
                         f"'min-input-files', '2', 'partial-progress.enabled', 'true', "
                         f"'delete-file-threshold', '1', 'remove-dangling-deletes', 'true'))").first()
        p.stage(f"{t}.rewritten_files", r["rewritten_data_files_count"], added=r["added_data_files_count"])
        io.spark.sql(f"CALL {cat}.system.rewrite_manifests(table => '{ident}')").collect()
        e = io.spark.sql(f"CALL {cat}.system.expire_snapshots(table => '{ident}', "
                         f"older_than => TIMESTAMP '{older}', retain_last => {retain_last})").first()
        p.stage(f"{t}.expired_data_files", e["deleted_data_files_count"])
    return p.done()


# The table properties where a maintenance run leaves what it dropped from the table.
DROPPED_PROPERTIES = {"as_of": "usersignals.maintenance.as-of", "rows": "usersignals.maintenance.expired-rows",
                      "files": "usersignals.maintenance.expired-files"}


def record_dropped(io: LakeIO, table: str, as_of: dt.datetime, rows: int, files: int) -> None:
    """What the run as of ``as_of`` dropped from ``table``, kept in the table's own properties: the
    lake is what the task that submitted the job can read back wherever the driver ran (on
    Kubernetes, cluster mode: another pod, whose files and logs the task never sees)."""
    p = DROPPED_PROPERTIES
    io.spark.sql(f"ALTER TABLE {io.name(table)} SET TBLPROPERTIES ('{p['as_of']}' = '{as_of.isoformat()}', "
                 f"'{p['rows']}' = '{int(rows)}', '{p['files']}' = '{int(files)}')")


def maintenance_dropped(catalog, namespace: str, tables: list[str], defs: Mapping[str, TableDef],
                        as_of: dt.datetime) -> dict[str, dict[str, int]]:
    """``{table: {"rows", "files"}}`` that the maintenance run as of ``as_of`` dropped from each of
    ``tables`` with a retention, read back from their properties (``record_dropped``) through
    ``catalog`` (pyiceberg: no Spark). A table whose properties hold another run's figures, or
    none, is an error: a task must not report what an earlier run did."""
    p = DROPPED_PROPERTIES
    out: dict[str, dict[str, int]] = {}
    for t in tables:
        if defs[t].retention_days is None:
            continue
        props = catalog.load_table(f"{namespace}.{t}").properties
        recorded = props.get(p["as_of"])
        if recorded is None or dt.datetime.fromisoformat(recorded) != as_of:
            raise RuntimeError(f"{namespace}.{t} holds no figures of the maintenance run as of {as_of.isoformat()}: "
                               f"its {p['as_of']} is {recorded!r}")
        out[t] = {"rows": int(props[p["rows"]]), "files": int(props[p["files"]])}
    return out


def drop_expired_partitions(io: LakeIO, tdef: TableDef, now: dt.datetime) -> tuple[int, int, dt.date]:
    """Delete the table's rows of the days before ``now``'s day minus its retention, by a
    predicate on the day partition's column: whole files go, none is rewritten. Returns the
    rows and data files dropped and the first day kept."""
    column = tdef.day_column()
    cutoff = now.astimezone(dt.timezone.utc).date() - dt.timedelta(days=tdef.retention_days)
    bound = dt.datetime.combine(cutoff, dt.time(), tzinfo=dt.timezone.utc).isoformat()
    predicate = f"{column} < TIMESTAMP '{bound}'"
    name = io.name(tdef.name)
    files = io.spark.sql(f"SELECT count(*) AS n FROM {name}.data_files WHERE "
                         f"partition.{partition_name(column, 'day')} < DATE '{cutoff}'").first()["n"]
    rows = io.spark.sql(f"SELECT count(*) AS n FROM {name} WHERE {predicate}").first()["n"]
    if rows:
        io.spark.sql(f"DELETE FROM {name} WHERE {predicate}")
    return int(rows), int(files) if rows else 0, cutoff


# --- erasure: delete a user ---------------------------------------------------------------

def _user_literal(value: str, binary: bool) -> str:
    """The user id as a SQL literal that no quote or backslash in it can break out of."""
    hexed = value.encode().hex().upper()
    return f"X'{hexed}'" if binary else f"CAST(X'{hexed}' AS STRING)"


def delete_user(io: LakeIO, defs: Mapping[str, TableDef], user_id: str, requested_at: dt.datetime,
                requested_by: str, reason: str | None = None, kv_removed: Mapping[str, int] | None = None,
                kv_deleted_at: dt.datetime | None = None, request_id: str | None = None) -> dict[str, int]:
    """Erase a user from every table with user rows: row-level deletes (position delete files;
    the next maintenance compaction rewrites the data files without the rows) of what arrived
    up to ``requested_at`` — the user's later events are new and stay. Then one audit row in
    ``deletions``: who, when, how much per store and table (``kv_removed`` is what the KV layer
    deletion reported), the user only as a sha256. Returns rows removed per table."""
    import hashlib
    import json
    import uuid

    p = Progress("delete_user", io.metrics_dir, requested_by=requested_by)
    bound = requested_at.astimezone(dt.timezone.utc).isoformat()
    removed: dict[str, int] = {}
    for t, tdef in defs.items():
        if tdef.user_column is None:
            continue
        name = io.name(t)
        table = io.read(t)
        binary = table.schema[tdef.user_column].dataType.simpleString() == "binary"
        predicate = (f"{tdef.user_column} = {_user_literal(user_id, binary)} AND "
                     f"({tdef.arrival_column} IS NULL OR {tdef.arrival_column} <= TIMESTAMP '{bound}')")
        n = io.spark.sql(f"SELECT count(*) AS n FROM {name} WHERE {predicate}").first()["n"]
        if n:
            io.spark.sql(f"DELETE FROM {name} WHERE {predicate}")
        removed[f"lake.{t}"] = int(n)
        p.stage(f"lake.{t}", n)
    completed = dt.datetime.now(dt.timezone.utc)
    audit = {**dict(kv_removed or {}), **removed}
    row = (request_id or uuid.uuid4().hex, hashlib.sha256(user_id.encode()).hexdigest(), requested_by, reason,
           requested_at, kv_deleted_at, completed, json.dumps(audit, sort_keys=True))
    io.append(DELETIONS, io.spark.createDataFrame([row], DELETIONS_SCHEMA))
    p.stage("audited", 1)
    p.done()
    return audit


DELETIONS_SCHEMA = ("request_id string, user_id_sha256 string, requested_by string, reason string, "
                    "requested_at timestamp, kv_deleted_at timestamp, completed_at timestamp, removed string")


# --- online/offline parity ----------------------------------------------------------------

class ParityError(RuntimeError):
    pass


def parity(io: LakeIO, registry: Registry, store, sample: int, watermark: dt.datetime,
           threshold: float, lookback_days: int = 30, seed: int | None = None) -> dict[str, float]:
    """Rebuild a sample of users' sequences from the lake as of ``watermark`` and compare them
    with the KV layer; raise ``ParityError`` when the share of mismatched (user, dataset)
    sequences exceeds ``threshold``.

    For each (user, dataset): KV events at or before the watermark, newest first, must equal
    the lake's newest events at or before the watermark, as many as the KV may keep once
    its events after the watermark are counted.
    """
    p = Progress("parity", io.metrics_dir, sample=str(sample), watermark=watermark.isoformat())
    start = watermark - dt.timedelta(days=lookback_days)
    events = io.read(lake.ENRICHED_EVENTS).where(
        (F.col("event_time") >= F.lit(start)) & (F.col("event_time") <= F.lit(watermark))
        & ~F.col("user_id").startswith("__"))
    users = [r["user_id"] for r in events.select("user_id").distinct().collect()]
    rng = random.Random(seed)
    users = rng.sample(users, min(sample, len(users)))
    if not users:
        p.stage("compared", 0)
        return {**p.done(), "mismatch_rate": 0.0, "compared": 0}
    wm_ms = int(watermark.timestamp() * 1000)
    # The stream's datasets only: an experiment's exp_* datasets have no lake rows to match.
    datasets = registry.realtime_datasets()
    kept = T.last_n(T.dedup_events(events.where(F.col("user_id").isin(users)), "indexed_at"),
                    {d: ds.retention for d, ds in datasets.items()})
    lake_seqs: dict[tuple[str, str], list[str]] = {}
    for r in kept.orderBy("user_id", "dataset", "rank").select("user_id", "dataset", "event_id").collect():
        lake_seqs.setdefault((r["user_id"], r["dataset"]), []).append(r["event_id"])
    compared = mismatched = 0
    examples = []
    for u in users:
        kv = store.read(u, {d: ds.retention for d, ds in datasets.items()})
        for d, ds in datasets.items():
            stored = [decode_stored(x) for x in kv[d]]
            after = sum(1 for s in stored if s["ts"] > wm_ms)
            kv_ids = [s["event_id"] for s in stored if s["ts"] <= wm_ms]
            expected = lake_seqs.get((u, d), [])[:max(0, ds.retention - after)]
            if not kv_ids and not expected:
                continue
            compared += 1
            if kv_ids != expected:
                mismatched += 1
                if len(examples) < 5:
                    examples.append((u, d, len(kv_ids), len(expected)))
    rate = mismatched / compared if compared else 0.0
    p.stage("compared", compared, mismatched=mismatched, rate=f"{rate:.4f}", examples=examples)
    out = {**p.done(), "mismatch_rate": rate, "compared": compared, "mismatched": mismatched}
    if rate > threshold:
        p.failed()
        raise ParityError(f"parity: {mismatched}/{compared} sequences differ ({rate:.2%} > {threshold:.2%}); "
                          f"examples (user, dataset, kv, lake): {examples}")
    return out
