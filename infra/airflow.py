"""Airflow for the local stack, from its own environment (``.venv-airflow``).

    python -m infra.airflow env          # print the variables (eval "$(...)" in a shell)
    python -m infra.airflow standalone   # scheduler + API server + UI on settings.airflow_port (8080)
    python -m infra.airflow password     # the generated admin password

``AIRFLOW_HOME`` is ``<data_dir>/airflow``; the metadata database is the ``airflow`` database of
the stack's PostgreSQL (``infra.postgres``: started by `make up`, or by ``standalone`` here
when it is not running); the DAGs are ``dags/``;
``spark_default`` points at ``settings.spark_master``. Parallelism is capped at 4
(Airflow's default spawns 32 workers). Airflow runs from ``.venv-airflow`` (it pins FastAPI
below what the serving API wants); its Spark tasks run ``spark-submit`` with the main
environment's Python (``settings.batch_python``). This module runs in either environment.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from infra import postgres
from usersignals.settings import REPO_ROOT, Settings, load_settings

AIRFLOW_ENV = REPO_ROOT / ".venv-airflow"
AIRFLOW = AIRFLOW_ENV / "bin" / "airflow"
AIRFLOW_PYTHON = AIRFLOW_ENV / "bin" / "python"

def airflow_env(settings: Settings, port: int | None = None) -> dict[str, str]:
    home = settings.data_dir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    port = port or settings.airflow_port
    batch_python = settings.batch_python
    return {
        **settings.to_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": settings.bind_host,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://{settings.host}:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{settings.host}:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(port + 1),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(port + 2),
        "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.airflow_db_url or postgres.url(settings, "airflow"),
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": settings.spark_master}),
        # Airflow's own commands first (standalone starts `airflow` subcommands), then spark-submit's.
        "PATH": os.pathsep.join([str(AIRFLOW.parent), os.path.dirname(batch_python), os.environ.get("PATH", "")]),
        "PYTHONPATH": str(REPO_ROOT),
        "PYSPARK_PYTHON": batch_python,
    }


def admin_password(settings: Settings) -> str:
    path = settings.data_dir / "airflow" / "simple_auth_manager_passwords.json.generated"
    return json.loads(path.read_text())["admin"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = load_settings()
    env = airflow_env(settings)
    cmd = argv[0] if argv else "env"
    if cmd == "env":
        for k, v in env.items():
            print(f"export {k}={json.dumps(v) if not v.startswith('{') else repr(v)}")
        return 0
    if cmd == "password":
        print(admin_password(settings))
        return 0
    # Every other command uses the metadata database: start the stack's PostgreSQL if it is not up
    # (`make up` runs it), and stop it again afterwards.
    database = None
    if not settings.airflow_db_url and not postgres.ready(settings):
        from infra.stack import Stack

        database = Stack(settings, components=("postgres",))
        database.start()
    proc = None
    try:
        if cmd == "standalone":
            # In a session of its own, stopped as a whole on Ctrl-C or SIGTERM before the database
            # goes: standalone's own children (scheduler, triggerer, ...) outlive a signal to it alone.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            subprocess.run([str(AIRFLOW), "db", "migrate"], env={**os.environ, **env}, check=True,
                           stdout=subprocess.DEVNULL)
            proc = subprocess.Popen([str(AIRFLOW), "standalone"], env={**os.environ, **env}, cwd=REPO_ROOT,
                                    start_new_session=True)
            return proc.wait()
        return subprocess.call([str(AIRFLOW), *argv], env={**os.environ, **env})
    except KeyboardInterrupt:
        return 130
    finally:
        if proc is not None:
            stop_standalone(proc)
        if database is not None:
            database.stop()



def start_standalone(settings: Settings, port: int, log_path: Path):
    """Start ``airflow standalone`` (after ``db migrate``) in its own process group; returns the Popen."""
    env = {**os.environ, **airflow_env(settings, port)}
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    log = open(log_path, "ab")
    return subprocess.Popen([str(AIRFLOW), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO_ROOT)


def stop_standalone(proc, timeout_s: float = 20.0) -> None:
    """Stop standalone and all its children (scheduler, API server, DAG processor, triggerer):
    SIGTERM to the parent alone leaves them running."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            try:  # children that outlived the parent
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


if __name__ == "__main__":
    sys.exit(main())
