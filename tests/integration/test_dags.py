"""The DAG checks (tests/dags) in the environment Airflow runs in, as part of this suite."""
import subprocess

import pytest

from infra.airflow import AIRFLOW_PYTHON
from usersignals.settings import REPO_ROOT

pytestmark = pytest.mark.integration


def test_dag_checks_pass_in_the_airflow_environment():
    assert AIRFLOW_PYTHON.exists(), f"{AIRFLOW_PYTHON} missing: run `make install`"
    proc = subprocess.run([str(AIRFLOW_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/dags"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
