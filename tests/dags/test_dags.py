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
        "publish_item_features", "retrain_model"}
    assert expected <= set(dagbag.dag_ids)


def test_dags_are_documented_retried_bounded_and_acyclic(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and dag.description and "usersignals" in dag.tags, dag_id
        assert dag.dagrun_timeout is not None, dag_id
        dag.topological_sort() if hasattr(dag, "topological_sort") else None
        for t in dag.tasks:
            assert t.execution_timeout is not None, (dag_id, t.task_id)
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
        for t in dag.tasks:
            env = t.env_vars
            assert env["PYSPARK_PYTHON"] == python and env["PATH"].startswith(os.path.dirname(python)), (dag_id, t)
