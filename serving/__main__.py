"""``python -m serving``: run the API on USERSIGNALS_BIND_HOST:USERSIGNALS_API_PORT.

With ``USERSIGNALS_API_WORKERS`` = N > 1 (default: the number of cores) uvicorn runs N worker
processes on the one port and restarts any that dies. Before they start, this sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory of this run (so /metrics sums every worker;
serving/metrics.py), which also tells each worker that it holds 1/N of every tenant's limits
(serving/limits.py); the directory is removed when the server stops, or by the next start if
the server was killed. N = 1 is one process, as before, with no such directory.

With ``USERSIGNALS_API_ADMIN_PORT`` set, every worker also listens on that port (on
``USERSIGNALS_API_ADMIN_HOST``, else the bind host), which alone serves the admin routes
(serving/app.py picks the routes by the port a request came in on).
"""
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

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
    if s.api_admin_port and s.api_admin_port == s.api_port:  # create_app says the same; here before binding
        raise SystemExit(f"USERSIGNALS_API_ADMIN_PORT is {s.api_admin_port}, the API's own port: set another "
                         "port, or 0 to serve the admin routes on the API's port")
    run = dict(host=s.bind_host, port=s.api_port, log_level="warning", access_log=False)
    if s.api_workers == 1:
        serve(s, run)
        return
    remove_dead_runs()
    shared = tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared  # inherited by the workers uvicorn spawns
    try:
        serve(s, {**run, "workers": s.api_workers})
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def serve(s, run: dict) -> None:
    """uvicorn on the API's port, and on the admin port when there is one (each worker serves both
    sockets; uvicorn.run binds only one, so the sockets are bound here as it would)."""
    if not s.api_admin_port:
        uvicorn.run("serving.app:create_app", factory=True, **run)
        return
    config = uvicorn.Config("serving.app:create_app", factory=True, **run)
    admin = uvicorn.Config("serving.app:create_app", factory=True,
                           **{**run, "host": s.api_admin_host or s.bind_host, "port": s.api_admin_port})
    sockets = [config.bind_socket(), admin.bind_socket()]
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=sockets).run()
        else:
            uvicorn.Server(config).run(sockets=sockets)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
