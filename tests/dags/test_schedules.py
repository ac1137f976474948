"""When DAGs run: a missed day of a per-day repair DAG gets its run, and every asset a DAG is
scheduled on is produced by some task.

Runs in Airflow's environment (tests/dags/test_dags.py says how). The next run is computed the
way the scheduler does (``DagModel.calculate_dagrun_date_fields``): from the DAG as serialized for
the scheduler, given the DAG's last automated run.
"""
import pendulum
import pytest

from tests.dags.test_dags import dagbag, render  # noqa: F401  (the module's DagBag fixture)
from usersignals.registry import load_registry

UTC = pendulum.UTC


def repair_dags() -> set[str]:
    """The DAGs whose runs each repair one day: a day without its run stays wrong."""
    return {f"daily_enrichment_{t}" for t in load_registry().event_types} | {"training_examples"}


def next_run_after(dag, last_run):
    """What the scheduler makes next after ``last_run`` (a ``DagRunInfo``), today or in a month."""
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    return LazyDeserializedDAG.from_dag(dag).next_dagrun_info(last_automated_run_info=last_run)


def test_only_the_per_day_repair_dags_catch_up_one_run_at_a_time(dagbag):  # noqa: F811
    catching_up = {dag_id for dag_id, dag in dagbag.dags.items() if dag.catchup}
    assert catching_up == repair_dags()
    for dag_id in catching_up:
        assert dagbag.dags[dag_id].max_active_runs == 1, dag_id


def test_a_missed_day_of_daily_reenrichment_gets_its_run(dagbag):  # noqa: F811
    """The last run re-enriched the 1st of October, then the scheduler was down until December:
    each daily re-enrichment's next run is the 2nd's, due when the 2nd ended, and re-enriches
    the 2nd."""
    from airflow.timetables.base import DagRunInfo

    last = DagRunInfo.interval(pendulum.datetime(2026, 10, 1, tz=UTC), pendulum.datetime(2026, 10, 2, tz=UTC))
    for event_type in load_registry().event_types:
        dag = dagbag.dags[f"daily_enrichment_{event_type}"]
        missed = next_run_after(dag, last)
        assert (missed.data_interval.start, missed.data_interval.end, missed.run_after) == \
            (pendulum.datetime(2026, 10, 2, tz=UTC), pendulum.datetime(2026, 10, 3, tz=UTC),
             pendulum.datetime(2026, 10, 3, tz=UTC)), event_type
        argv = render(dag, dag.get_task("reenrich"), {"data_interval_start": missed.data_interval.start,
                                                      "data_interval_end": missed.data_interval.end})
        assert argv[:3] == ["daily", "--day", "2026-10-02"], argv
        # And the day after it next, not a jump to today: every missed day is repaired in turn.
        after = next_run_after(dag, missed)
        assert after.data_interval.start == pendulum.datetime(2026, 10, 3, tz=UTC)


def test_a_missed_day_of_training_examples_gets_its_run(dagbag):  # noqa: F811
    from airflow.timetables.base import DagRunInfo

    dag = dagbag.dags["training_examples"]
    last = DagRunInfo.exact(pendulum.datetime(2026, 10, 2, 1, 30, tz=UTC))  # built the examples of 10-01
    missed = next_run_after(dag, last)
    assert missed.run_after == pendulum.datetime(2026, 10, 3, 1, 30, tz=UTC)
    argv = render(dag, dag.get_task("lake"), {"data_interval_start": missed.data_interval.start,
                                              "data_interval_end": missed.data_interval.end})
    assert argv[:3] == ["training-examples", "--day", "2026-10-02"], argv


def test_a_new_repair_dag_starts_at_its_start_date(dagbag):  # noqa: F811
    """Unpaused for the first time, a repair DAG runs every day from its start date (what
    docs/operations/airflow.md says an operator should expect)."""
    first = next_run_after(dagbag.dags["daily_enrichment_click"], None)
    assert first.data_interval.start == pendulum.datetime(2026, 1, 1, tz=UTC)


def scheduled_on(schedule_condition) -> set[str]:
    """The URIs of every asset in a DAG's asset condition (``a & b``, ``a | b``, nested)."""
    from airflow.sdk import Asset

    if schedule_condition is None:
        return set()
    if isinstance(schedule_condition, Asset):
        return {schedule_condition.uri}
    out = set()
    for part in getattr(schedule_condition, "objects", ()):
        out |= scheduled_on(part)
    return out


def asset_condition(dag):
    """What a DAG waits on: a list of assets, an asset expression, or AssetOrTimeSchedule's assets."""
    timetable = dag.timetable
    return getattr(timetable, "asset_condition", None)


def produced(dagbag) -> dict[str, list[str]]:  # noqa: F811
    """asset URI -> the tasks (dag.task) whose outlets name it."""
    from airflow.sdk import Asset

    out: dict[str, list[str]] = {}
    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            for outlet in task.outlets or ():
                if isinstance(outlet, Asset):
                    out.setdefault(outlet.uri, []).append(f"{dag_id}.{task.task_id}")
    return out


def test_every_asset_a_dag_waits_on_is_produced_by_a_task(dagbag):  # noqa: F811
    producers = produced(dagbag)
    waits = {dag_id: scheduled_on(asset_condition(dag)) for dag_id, dag in dagbag.dags.items()}
    # The walk sees inside AssetOrTimeSchedule (retrain_model) and plain asset lists (parity_check).
    registry = load_registry()
    assert len(waits["retrain_model"]) == len(registry.event_types)
    assert len(waits["parity_check"]) == 1
    orphans = {dag_id: sorted(uri for uri in uris if uri not in producers) for dag_id, uris in waits.items()}
    assert {d: o for d, o in orphans.items() if o} == {}


def test_the_producer_check_catches_an_asset_nothing_produces(dagbag):  # noqa: F811
    from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable

    orphan = Asset("iceberg://nowhere/none/never_written")
    dag = DAG("waits_on_nothing_real", schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 * * * *", timezone="UTC"), assets=orphan & dagbag.dags[
            "parity_check"].timetable.asset_condition), start_date=pendulum.datetime(2026, 1, 1, tz=UTC))
    assert scheduled_on(asset_condition(dag)) - set(produced(dagbag)) == {orphan.uri}


def test_publish_item_features_runs_on_a_time_schedule(dagbag):  # noqa: F811
    """item_features is written outside Airflow (the catalog's upstream; locally the generator),
    so no task can announce it: the publication runs hourly, and after retraining's item
    features nothing waits on an event that never comes."""
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    dag = dagbag.dags["publish_item_features"]
    assert asset_condition(dag) is None
    assert LazyDeserializedDAG.from_dag(dag).timetable.summary == "15 * * * *"
    assert [t.application_args for t in dag.tasks] == [["publish-features"]]


@pytest.mark.parametrize("dag_id", ["retrain_model"])
def test_retraining_names_and_publishes_its_runs_version_from_the_as_of(dagbag, dag_id):  # noqa: F811
    from batch.__main__ import parser

    dag = dagbag.dags[dag_id]
    interval = {"data_interval_start": pendulum.datetime(2026, 10, 1, tz=UTC),
                "data_interval_end": pendulum.datetime(2026, 10, 2, tz=UTC)}
    train = parser().parse_args(render(dag, dag.get_task("train_evaluate_gate"), interval))
    publish = parser().parse_args(render(dag, dag.get_task("publish"), interval))
    assert train.as_of == publish.as_of == pendulum.datetime(2026, 10, 2, tz=UTC)
    assert train.holdout_day.isoformat() == "2026-10-01" and publish.version is None


def test_a_scheduled_catch_up_older_than_the_window_does_no_work(dagbag):  # noqa: F811  (puts dags/ on sys.path)
    """A repair DAG unpaused for the first time would replay every day since its start date:
    scheduled runs of days older than the window skip; what someone asked for always runs."""
    import datetime as dt

    from _usersignals import within_catchup

    now = dt.datetime(2026, 12, 7, 12, tzinfo=dt.timezone.utc)
    ended = {days: now - dt.timedelta(days=days) for days in (0, 13, 14, 15, 300)}
    assert {d: within_catchup("scheduled", end, now, 14) for d, end in ended.items()} == \
        {0: True, 13: True, 14: True, 15: False, 300: False}
    for asked in ("manual", "backfill", "asset_triggered"):
        assert within_catchup(asked, ended[300], now, 14), asked


def test_the_catch_up_check_reads_airflows_run_types(dagbag):  # noqa: F811
    """The task's callable gets Airflow's own DagRunType (an enum), not a string."""
    import datetime as dt
    from types import SimpleNamespace

    from airflow.utils.types import DagRunType

    from _usersignals import _catchup_check

    old = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    assert _catchup_check(14, dag_run=SimpleNamespace(run_type=DagRunType.SCHEDULED), data_interval_end=old) is False
    assert _catchup_check(14, dag_run=SimpleNamespace(run_type=DagRunType.BACKFILL_JOB), data_interval_end=old)
    assert _catchup_check(14, dag_run=SimpleNamespace(run_type=DagRunType.MANUAL), data_interval_end=old)
    recent = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    assert _catchup_check(14, dag_run=SimpleNamespace(run_type=DagRunType.SCHEDULED), data_interval_end=recent)


def test_every_task_of_a_repair_dag_waits_on_the_catch_up_window(dagbag):  # noqa: F811
    from _usersignals import SETTINGS

    for dag_id in repair_dags():
        dag = dagbag.dags[dag_id]
        guard = dag.get_task("within_catchup_window")
        assert guard.op_kwargs == {"days": SETTINGS.catchup_days}
        assert [t.task_id for t in dag.roots] == ["within_catchup_window"], dag_id
        work = {t.task_id for t in dag.tasks} - {guard.task_id}
        assert work and work <= guard.get_flat_relative_ids(upstream=False), dag_id
