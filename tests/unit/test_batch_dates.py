"""Every batch job computes as of the moment its caller names (the DAG's data interval), never
the wall clock: the window arithmetic, and the command line refusing to run without it."""
import datetime as dt

import pytest

from batch import jobs
from batch.__main__ import parser, run
from usersignals.settings import load_settings

UTC = dt.timezone.utc
AS_OF = dt.datetime(2026, 10, 1, tzinfo=UTC)  # a backfill of last month: long before "now"


def test_a_window_ends_at_the_as_of_moment_whatever_the_clock_says():
    assert jobs.window_before(AS_OF, 30) == (dt.datetime(2026, 9, 1, tzinfo=UTC), AS_OF)
    offset = dt.datetime(2026, 10, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))  # the same instant
    assert jobs.window_before(offset, 1)[0] == dt.datetime(2026, 9, 30, tzinfo=UTC)


def test_a_window_refuses_a_moment_without_offset_and_a_non_positive_length():
    with pytest.raises(ValueError, match="2026-10-01T00:00:00 has no UTC offset"):
        jobs.window_before(AS_OF.replace(tzinfo=None), 30)
    with pytest.raises(ValueError, match="got 0"):
        jobs.window_before(AS_OF, 0)


@pytest.mark.parametrize("argv,option", [
    (["bootstrap", "--datasets", "clicks", "--days", "30"], "--as-of"),
    (["backfill-enrichment", "--enrichment", "item_popularity", "--days", "30"], "--as-of"),
    (["select", "--experiment", "e", "--dataset", "clicks", "--rule", "dwell", "--n", "5"], "--as-of"),
    (["parity", "--sample", "10"], "--as-of"),
    (["retrain"], "--holdout-day"),
    (["daily"], "--day"),
])
def test_windowed_jobs_do_not_run_without_their_moment(argv, option, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
    assert option in capsys.readouterr().err


def test_an_as_of_without_offset_is_refused_naming_the_value(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["bootstrap", "--datasets", "clicks", "--days", "3", "--as-of", "2026-10-01T00:00"])
    assert "'2026-10-01T00:00' has no UTC offset" in capsys.readouterr().err


def test_the_cli_hands_each_job_its_as_of(monkeypatch):
    seen = {}

    def record(name):
        def job(*args, **kwargs):
            seen[name] = (args, kwargs)
            return {}
        return job

    for name in ("bootstrap", "backfill_enrichment", "select_experiment", "parity"):
        monkeypatch.setattr(jobs, name, record(name))
    at = "--as-of", AS_OF.isoformat()
    settings = load_settings()
    for argv in (["bootstrap", "--datasets", "clicks", "--days", "3", *at],
                 ["backfill-enrichment", "--enrichment", "item_popularity", "--days", "3", *at],
                 ["select", "--experiment", "e", "--dataset", "clicks", "--rule", "dwell", "--n", "5", *at],
                 ["parity", "--watermark-minutes", "10", *at]):
        run(parser().parse_args(argv), settings, spark=object())  # no Spark: the jobs are recorded
    assert seen["bootstrap"][1]["as_of"] == AS_OF
    assert seen["backfill_enrichment"][1]["as_of"] == AS_OF
    assert seen["select_experiment"][1]["as_of"] == AS_OF
    watermark = seen["parity"][0][4]
    assert watermark == AS_OF - dt.timedelta(minutes=10)  # minutes before the run's moment, not before now
