"""``python -m serving``: run the API on USERSIGNALS_BIND_HOST:USERSIGNALS_API_PORT.

With ``USERSIGNALS_API_WORKERS`` = N > 1 (default: the number of cores) uvicorn runs N worker
processes on the one port and restarts any that dies. Before they start, this sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory of this run (so /metrics sums every worker;
serving/metrics.py), which also tells each worker that it holds 1/N of every tenant's limits
(serving/limits.py); the directory is removed when the server stops, or by the next start if
the server was killed. N = 1 is one process, as before, with no such directory.
"""
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from usersignals.settings import load_settings


RUN_PREFIX = "usersignals-api-metrics-"


def remove_dead_runs() -> None:
    """The metrics directories of servers that were killed (their pid is gone)."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_PREFIX}*-*"):
        try:
            os.kill(int(path.name[len(RUN_PREFIX):].split("-")[0]), 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue


def main() -> None:
    s = load_settings()
    run = dict(host=s.bind_host, port=s.api_port, log_level="warning", access_log=False)
    if s.api_workers == 1:
        uvicorn.run("serving.app:create_app", factory=True, **run)
        return
    remove_dead_runs()
    shared = tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared  # inherited by the workers uvicorn spawns
    try:
        uvicorn.run("serving.app:create_app", factory=True, workers=s.api_workers, **run)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


if __name__ == "__main__":
    main()
