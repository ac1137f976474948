"""Every replace is one commit, on real Spark + Iceberg: a job whose write fails leaves the table's
old rows (a DELETE then an append, two commits, left it empty), a successful re-run swaps exactly
the rows it owns in one snapshot, and names that come from the lake are values, never SQL text.

The failure is injected where a crash would hit: every DataFrame the job writes raises while
Spark computes it, after the job has read and decided everything (``FailingWrites``).
"""
import datetime as dt
from functools import partial

import pytest
from pyspark.sql import functions as F

from batch import jobs
from tests.integration.test_selection import at, planted_lake
from usersignals import lake
from usersignals.settings import REPO_ROOT

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
AS_OF = dt.datetime(2026, 11, 22, 0, 0, tzinfo=UTC)      # scored day 11-21, window 11-19 and 11-20
EARLIER = dt.datetime(2026, 11, 21, 0, 0, tzinfo=UTC)    # another window of the same experiment
ENDS = dt.date.today() + dt.timedelta(days=30)
INJECTED = "injected write failure"


def registry_text() -> str:
    return (REPO_ROOT / "usersignals" / "default_registry.toml").read_text() + f'''
[experiments.atomic]
dataset = "clicks"
rules = ["last", "dwell"]
n = 2
ends = {ENDS.isoformat()}
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory, kv_server, new_lake):
    settings, registry, spark, io, _ = planted_lake(tmp_path_factory.mktemp("replace"), registry_text(), kv_server,
                                                    new_lake)
    yield settings, registry, io
    spark.stop()


def _fail(value):
    raise RuntimeError(INJECTED)


def poisoned(df):
    """``df`` whose computation raises on its first row: the write fails after it has started."""
    first = df.schema.fields[0]
    return df.withColumn(first.name, F.udf(_fail, first.dataType)(F.col(first.name)))


class FailingWrites(jobs.LakeIO):
    """The lake as the job sees it, except that every DataFrame it writes fails while written."""

    def append(self, table, df):
        super().append(table, poisoned(df))

    def replace(self, table, df, where, within=None):
        super().replace(table, poisoned(df), where, within)

    def overwrite_partitions(self, table, df):
        super().overwrite_partitions(table, poisoned(df))


def failing(io):
    return FailingWrites(io.spark, io.catalog, io.namespace, io.to_kv, io.features_to_kv, io.metrics_dir, io.kv)


def rows_of(io, table, experiment="atomic"):
    return sorted(tuple(r) for r in io.read(table).where(F.col("experiment") == experiment).collect())


def snapshots(io, table) -> int:
    return io.spark.sql(f"SELECT count(*) AS n FROM {io.name(table)}.snapshots").first()["n"]


def test_a_selection_run_that_fails_while_writing_keeps_the_old_reports_and_sequences(env):
    _, registry, io = env
    jobs.select_experiment(io, registry, "atomic", "clicks", [], 2, days=2, as_of=EARLIER, to_kv=False)
    jobs.select_experiment(io, registry, "atomic", "clicks", [], 2, days=2, as_of=AS_OF, to_kv=False)
    reports, sequences = rows_of(io, lake.SELECTION_REPORTS), rows_of(io, lake.SELECTED_SEQUENCES)
    assert sorted((r[1], r[5]) for r in reports) == sorted(
        (rule, moment.replace(tzinfo=None)) for rule in ("last", "dwell") for moment in (
            dt.datetime(2026, 11, 20), dt.datetime(2026, 11, 21)))
    # Each rule's 2 picks of u1, u2 and u3 and the one event of u4 in the window 11-19..11-20.
    assert sorted(r[9] for r in sequences) == ["dwell"] * 7 + ["last"] * 7

    # The run of the same window fails while it writes its reports: both tables keep what they had.
    with pytest.raises(Exception, match=INJECTED):
        jobs.select_experiment(failing(io), registry, "atomic", "clicks", [], 2, days=2, as_of=AS_OF, to_kv=False)
    assert rows_of(io, lake.SELECTION_REPORTS) == reports
    assert rows_of(io, lake.SELECTED_SEQUENCES) == sequences

    # A successful re-run replaces the window's reports and the partition, one snapshot each.
    before = snapshots(io, lake.SELECTION_REPORTS), snapshots(io, lake.SELECTED_SEQUENCES)
    jobs.select_experiment(io, registry, "atomic", "clicks", [], 2, days=2, as_of=AS_OF, to_kv=False)
    assert (snapshots(io, lake.SELECTION_REPORTS), snapshots(io, lake.SELECTED_SEQUENCES)) == \
        (before[0] + 1, before[1] + 1)
    again = rows_of(io, lake.SELECTION_REPORTS)
    assert [r[:13] for r in again] == [r[:13] for r in reports]  # the same figures (not timings, run_at)
    assert [r for r in again if r[5] == dt.datetime(2026, 11, 20)] == \
        [r for r in reports if r[5] == dt.datetime(2026, 11, 20)]  # the other window untouched
    assert sorted(r[:8] for r in rows_of(io, lake.SELECTED_SEQUENCES)) == sorted(r[:8] for r in sequences)


def report_row(experiment, rule, window_end, recall, *, created_at):
    """A selection_reports row of ``experiment``'s 2-day window ending ``window_end``."""
    return (experiment, rule, "clicks", 2, window_end - dt.timedelta(days=2), window_end, "d", 3, recall, 0.1,
            "last", None, None, 0.0, created_at)


def test_replace_swaps_the_rows_it_names_even_in_files_shared_with_rows_it_keeps(env):
    _, _, io = env
    schema = jobs.SELECTION_REPORTS_SCHEMA
    w1, w2 = dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2026, 10, 2, tzinfo=UTC)

    report = partial(report_row, "shared", created_at=w2)

    # One append, one data file: both windows' rows in it (as compaction leaves them).
    io.append(lake.SELECTION_REPORTS, io.spark.createDataFrame(
        [report("last", w1, 0.1), report("last", w2, 0.2)], schema).coalesce(1))
    shared = F.col("experiment") == F.lit("shared")
    window2 = shared & (F.col("window_end") == F.lit(w2))
    new = io.spark.createDataFrame([report("last", w2, 0.9)], schema)
    with pytest.raises(Exception, match="some, but not all, rows match"):
        io.replace(lake.SELECTION_REPORTS, new, window2)  # Iceberg replaces whole files only
    with pytest.raises(Exception, match=INJECTED):
        io.replace(lake.SELECTION_REPORTS, poisoned(new), window2, within=shared)
    assert sorted(r["recall_at_k"] for r in io.read(lake.SELECTION_REPORTS).where(shared).collect()) == [0.1, 0.2]

    before = snapshots(io, lake.SELECTION_REPORTS)
    io.replace(lake.SELECTION_REPORTS, new, window2, within=shared)
    assert snapshots(io, lake.SELECTION_REPORTS) == before + 1
    got = {(r["window_end"], r["recall_at_k"]) for r in io.read(lake.SELECTION_REPORTS).where(shared).collect()}
    assert got == {(w1.replace(tzinfo=None), 0.1), (w2.replace(tzinfo=None), 0.9)}


def test_cleanup_deletes_an_experiment_whose_name_is_no_sql_literal(env, kv_client):
    """An experiment's name in selected_sequences comes from the lake (the registry may have
    dropped it): it is compared as a value, so quotes in it do not widen the delete to every row."""
    from usersignals.kv import SequenceStore

    settings, registry, io = env
    odd = "x' OR experiment <> 'x"  # as SQL text: WHERE experiment = 'x' OR experiment <> 'x'
    row = (odd, "exp_odd_last", "u1", 1, "e1", "a", at(20, 1), 1.0, at(22, 0), "last")
    io.append(lake.SELECTED_SEQUENCES, io.spark.createDataFrame([row], (
        "experiment string, dataset string, user_id string, rank int, event_id string, item_id string, "
        "event_time timestamp, score double, created_at timestamp, rule string")))
    kept = rows_of(io, lake.SELECTED_SEQUENCES, "atomic")
    assert kept  # the registered experiment's rows, which must stay
    store = SequenceStore(kv_client, registry, settings.kv_prefix)
    figures = jobs.select_cleanup(io, registry, as_of=AS_OF, store=store)
    assert figures["ended"] == [odd] and figures["lake_rows"] == 1
    assert rows_of(io, lake.SELECTED_SEQUENCES, odd) == []
    assert rows_of(io, lake.SELECTED_SEQUENCES, "atomic") == kept


class CommitInBetween(jobs.LakeIO):
    """The lake as a job sees it when another job commits to the same partition right after
    this one has read the rows it keeps (two event types' skew runs of the same day)."""
    other = None

    def current_snapshot(self, table):
        snapshot = super().current_snapshot(table)
        self.append(table, self.other)
        return snapshot


def test_a_replace_does_not_overwrite_what_another_job_committed_since_it_read(env):
    _, _, io = env
    schema = jobs.SELECTION_REPORTS_SCHEMA
    w1, w2 = dt.datetime(2026, 9, 1, tzinfo=UTC), dt.datetime(2026, 9, 2, tzinfo=UTC)

    report = partial(report_row, "raced", created_at=w2)

    io.append(lake.SELECTION_REPORTS, io.spark.createDataFrame([report("last", w1, 0.1)], schema))
    racing = CommitInBetween(io.spark, io.catalog, io.namespace, io.to_kv)
    racing.other = io.spark.createDataFrame([report("dwell", w1, 0.3)], schema)  # the other job's row
    raced = F.col("experiment") == F.lit("raced")
    with pytest.raises(Exception, match="[Cc]onflicting"):
        racing.replace(lake.SELECTION_REPORTS, io.spark.createDataFrame([report("last", w2, 0.9)], schema),
                       raced & (F.col("window_end") == F.lit(w2)), within=raced)
    got = {(r["rule"], r["recall_at_k"]) for r in io.read(lake.SELECTION_REPORTS).where(raced).collect()}
    assert got == {("last", 0.1), ("dwell", 0.3)}  # the other job's row kept; this run failed, to be retried
