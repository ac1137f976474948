"""The DAGs: every file imports, no cycles, params valid and documented, thin tasks.

Runs in Airflow's environment: `.venv-airflow/bin/python -m pytest tests/dags` (tests/integration/test_dags.py
does that as part of the suite)."""
import os
import sys

import pytest

from infra.airflow import airflow_env
from infra.stack import private_settings
from usersignals.registry import load_registry
from usersignals.settings import REPO_ROOT


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    env = airflow_env(private_settings(tmp_path_factory.mktemp("airflow")))
    old = dict(os.environ)
    os.environ.update(env)
    # Airflow puts the DAGs folder on sys.path (for dags/_usersignals.py); so does this test.
    sys.path.insert(0, str(REPO_ROOT / "dags"))
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:
        from airflow.models.dagbag import DagBag
    try:
        yield DagBag(dag_folder=str(REPO_ROOT / "dags"))
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_every_dag_file_imports(dagbag):
    assert dagbag.import_errors == {}
    registry = load_registry()
    expected = {f"daily_enrichment_{t}" for t in registry.event_types} | {
        "bootstrap_dataset", "backfill_enrichment", "selection_experiment", "lake_maintenance", "parity_check",
        "publish_item_features", "retrain_model", "user_erasure", "training_examples"}
    assert expected <= set(dagbag.dag_ids)


# The only tasks that are not a Spark job: the repair DAGs' catch-up window (dags/_usersignals.py).
NOT_SPARK = {"within_catchup_window"}


def spark_tasks(dag):
    """The DAG's Spark job tasks; any other task must be one of NOT_SPARK."""
    others = {t.task_id for t in dag.tasks if not hasattr(t, "application")}
    assert others <= NOT_SPARK, (dag.dag_id, others)
    return [t for t in dag.tasks if t.task_id not in others]


def test_dags_are_documented_retried_bounded_and_acyclic(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and dag.description and "usersignals" in dag.tags, dag_id
        assert dag.dagrun_timeout is not None, dag_id
        dag.topological_sort() if hasattr(dag, "topological_sort") else None
        for t in dag.tasks:
            assert t.execution_timeout is not None, (dag_id, t.task_id)
        for t in spark_tasks(dag):
            assert t.application.endswith("batch/submit.py"), (dag_id, t.task_id)


def test_params_have_types_descriptions_and_valid_defaults(dagbag):
    for dag_id, dag in dagbag.dags.items():
        dag.params.validate()  # defaults satisfy their schemas
        for name, param in dag.params.items():
            p = dag.params.get_param(name)
            assert p.schema.get("type"), (dag_id, name)
            assert p.description or p.schema.get("title") or p.schema.get("description"), (dag_id, name)


def test_bad_params_are_refused(dagbag):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags["bootstrap_dataset"].params)
    with pytest.raises(ParamValidationError, match="minimum"):
        params["days"] = 0
    with pytest.raises(ParamValidationError, match="not-a-dataset"):
        params["datasets"] = ["not-a-dataset"]
    params["days"] = 7  # and a good value is taken


def test_templated_arguments_render_to_the_batch_cli(dagbag):
    from batch.__main__ import parser

    dag = dagbag.dags["bootstrap_dataset"]
    args = [a.replace("{{ params.datasets | join(',') }}", "clicks,views").replace("{{ params.days }}", "3")
            .replace("{{ data_interval_end | ts }}", "2026-11-22T00:00:00+00:00")
            for a in dag.get_task("bootstrap").application_args]
    ns = parser().parse_args(args)
    assert ns.datasets == ["clicks", "views"] and ns.days == 3 and ns.as_of.year == 2026


def test_spark_tasks_run_in_the_batch_environment_not_airflows(dagbag):
    from usersignals.settings import load_settings

    python = load_settings().batch_python
    assert os.path.dirname(python) != os.path.dirname(sys.executable)  # not Airflow's environment
    assert os.access(os.path.join(os.path.dirname(python), "spark-submit"), os.X_OK)
    for dag_id, dag in dagbag.dags.items():
        for t in spark_tasks(dag):
            env = t.env_vars
            assert env["PYSPARK_PYTHON"] == python and env["PATH"].startswith(os.path.dirname(python)), (dag_id, t)


# --- every run computes as of its data interval, never the wall clock ---------------------------
# A run of a past interval (a backfill of last month), due long after that interval: each task's
# rendered arguments must name the interval's moments, and none the moment the run happened to start.
INTERVAL_START = "2026-10-01T00:00:00+00:00"
INTERVAL_END = "2026-10-02T00:00:00+00:00"
RUN_AFTER = "2026-11-30T08:00:00+00:00"
# The batch CLI's options that fix a run's moment, and what each must be for the interval above.
MOMENTS = {"as_of": "2026-10-02T00:00:00+00:00", "day": "2026-10-01", "holdout_day": "2026-10-01"}


class DagRun:
    def __init__(self, run_after):
        import pendulum

        self.run_after = pendulum.parse(run_after)
        self.run_id = "test"


def render(dag, task, context: dict) -> list[str]:
    from airflow.sdk.execution_time import macros

    env = dag.get_template_env()
    context = {"params": {k: dag.params[k] for k in dag.params}, "macros": macros,
               "dag_run": DagRun(RUN_AFTER), **context}
    return [env.from_string(a).render(**context) if isinstance(a, str) else a for a in task.application_args]


def moment_options(argv: list[str]) -> dict[str, str]:
    """The moment options the job's subcommand has, with the values these arguments give them."""
    from batch.__main__ import parser

    ns = vars(parser().parse_args(argv))
    return {k: (ns[k].isoformat() if ns[k] is not None else None) for k in MOMENTS if k in ns}


def test_every_task_takes_its_moments_from_the_runs_data_interval(dagbag):
    import pendulum

    interval = {"data_interval_start": pendulum.parse(INTERVAL_START),
                "data_interval_end": pendulum.parse(INTERVAL_END), "ds": INTERVAL_START[:10]}
    checked = 0
    for dag_id, dag in dagbag.dags.items():
        for task in spark_tasks(dag):
            argv = render(dag, task, interval)
            got = moment_options(argv)
            for option, value in got.items():
                assert value == MOMENTS[option], (dag_id, task.task_id, option, argv)
                checked += 1
            assert RUN_AFTER[:10] not in " ".join(argv), (dag_id, task.task_id, argv)
    # backfill_enrichment, bootstrap_dataset, selection_experiment, parity_check, retrain_model and
    # one daily_enrichment per event type: a new windowed job without its moment fails to parse above.
    assert checked >= 5 + len(load_registry().event_types)


def test_a_run_without_a_data_interval_computes_as_of_when_it_was_due(dagbag):
    """Asset-triggered runs (parity_check, retrain_model on fresh data) have no data interval
    (Airflow 3): they compute as of run_after, the moment the run was due, which a re-run keeps."""
    for dag_id, option, expected in (("parity_check", "as_of", RUN_AFTER),
                                     ("retrain_model", "holdout_day", "2026-11-29"),
                                     ("selection_experiment", "as_of", RUN_AFTER),
                                     ("backfill_enrichment", "as_of", RUN_AFTER)):
        dag = dagbag.dags[dag_id]
        task = next(t for t in spark_tasks(dag) if moment_options(render(dag, t, {"data_interval_start": None,
                                                                           "data_interval_end": None})))
        assert moment_options(render(dag, task, {}))[option] == expected, dag_id


def test_each_daily_reenrichment_measures_its_types_feature_skew_after_it(dagbag):
    import pendulum

    from batch.__main__ import parser

    registry = load_registry()
    interval = {"data_interval_start": pendulum.parse(INTERVAL_START),
                "data_interval_end": pendulum.parse(INTERVAL_END), "ds": INTERVAL_START[:10]}
    served = {registry.datasets[d].event_type for t in registry.tenants.values() for d in t.sequences
              if registry.datasets[d].experiment is None}
    checked = 0
    for event_type in registry.event_types:
        dag = dagbag.dags[f"daily_enrichment_{event_type}"]
        if event_type not in served:   # no tenant serves its dataset: nothing to compare
            assert "skew" not in dag.task_ids, event_type
            continue
        task = dag.get_task("skew")
        assert task.upstream_task_ids == {"reenrich"}, event_type
        argv = render(dag, task, interval)
        assert argv == ["skew", "--day", INTERVAL_START[:10], "--event-types", event_type]
        ns = parser().parse_args(argv)
        assert (ns.job, ns.day.isoformat(), ns.event_types, ns.tenant) == ("skew", "2026-10-01", [event_type], None)
        checked += 1
    assert checked == len(served) >= 1
