"""lake_maintenance's task reports the figures of its own run: the command it reads them back
with (from the lake, wherever the driver ran) names the run's --as-of and --tables.

Runs in Airflow's environment: `.venv-airflow/bin/python -m pytest tests/dags`."""
import os
import sys

import pytest

from infra.airflow import airflow_env
from infra.stack import private_settings
from usersignals.settings import REPO_ROOT

INTERVAL = {"data_interval_start": "2026-10-01T03:30:00+00:00", "data_interval_end": "2026-10-02T03:30:00+00:00"}


@pytest.fixture(scope="module")
def maintain(tmp_path_factory):
    old = dict(os.environ)
    os.environ.update(airflow_env(private_settings(tmp_path_factory.mktemp("airflow"))))
    sys.path.insert(0, str(REPO_ROOT / "dags"))   # as Airflow does, for dags/_usersignals.py
    try:
        import lake_maintenance

        yield lake_maintenance, lake_maintenance.dag.get_task("maintain")
    finally:
        sys.path.remove(str(REPO_ROOT / "dags"))
        os.environ.clear()
        os.environ.update(old)


def rendered(dag, task) -> list[str]:
    import pendulum
    from airflow.sdk.execution_time import macros

    env = dag.get_template_env()
    context = {"params": {k: dag.params[k] for k in dag.params}, "macros": macros,
               "data_interval_start": pendulum.parse(INTERVAL["data_interval_start"]),
               "data_interval_end": pendulum.parse(INTERVAL["data_interval_end"])}
    return [env.from_string(a).render(**context) for a in task.application_args]


def test_the_task_reads_back_the_figures_of_the_run_it_submitted(maintain):
    from batch.__main__ import parser

    module, task = maintain
    assert isinstance(task, module.MaintenanceSubmit)
    job = rendered(module.dag, task)
    command = module.figures_command(job, "/venv/bin/python")
    assert command[:4] == ["/venv/bin/python", "-m", "batch", "maintenance-figures"]
    submitted, read = parser().parse_args(job), parser().parse_args(command[3:])
    assert read.as_of == submitted.as_of and read.as_of.isoformat() == INTERVAL["data_interval_end"]
    assert read.tables is submitted.tables is None   # every table, as the job ran


def test_a_run_of_some_tables_reads_back_those_tables_only(maintain):
    module, _ = maintain
    job = ["maintenance", "--as-of", "2026-10-02T03:30:00+00:00", "--tables", "raw_events,dead_letters"]
    assert module.figures_command(job, "py")[-2:] == ["--tables", "raw_events,dead_letters"]


def test_job_arguments_without_a_moment_are_refused_naming_them(maintain):
    module, _ = maintain
    with pytest.raises(ValueError, match=r"\['maintenance', '--expire-days', '5'\] have no --as-of"):
        module.figures_command(["maintenance", "--expire-days", "5"], "py")
