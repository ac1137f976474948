"""PostgreSQL for the local stack: Airflow's metadata database and the lake's Iceberg catalog.

Debian's server binaries (package ``postgresql``), a cluster in ``<data_dir>/postgres`` created
on first start, listening on ``settings.host:postgres_port`` over TCP only (no Unix socket),
password authentication. PostgreSQL refuses to run as root: as root, the cluster belongs to the
``postgres`` user that the Debian package creates, and the server runs as that user.

The password is generated once and kept in ``<data_dir>/postgres.password`` (mode 0600), outside
the cluster directory; ``url(settings, db)`` gives a SQLAlchemy URL with it.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from usersignals.settings import LAKE_DATABASE, POSTGRES_USER, Settings

USER = POSTGRES_USER
DATABASES = ("airflow", LAKE_DATABASE)   # Airflow's metadata; the lake's Iceberg catalog
OS_USER = "postgres"   # who runs the server when the stack runs as root


def bin_dir() -> Path:
    """The newest Debian PostgreSQL server's bin directory."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise SystemExit("PostgreSQL's server is not installed (Debian package postgresql); run `make install`")
    return found[-1].parent


def cluster_dir(settings: Settings) -> Path:
    return settings.data_dir / "postgres"


def password(settings: Settings) -> str:
    return settings.postgres_password


def url(settings: Settings, database: str, driver: str = "postgresql+psycopg2") -> str:
    return settings.postgres_url(database, driver)


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups", "--"]


def _traversable_by_others(path: Path) -> None:
    """As root, let the server's user reach its cluster: add search (x, not read) permission to
    ancestors that lack it (pytest's base temp dir is 0700)."""
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def init_cluster(settings: Settings) -> bool:
    """Create the cluster if it does not exist yet; True if created now."""
    data = cluster_dir(settings)
    if (data / "PG_VERSION").exists():
        return False
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    pwfile = settings.data_dir / "postgres-initdb.pw"
    pwfile.write_text(password(settings))
    try:
        if os.geteuid() == 0:
            _traversable_by_others(data)
            shutil.chown(data, OS_USER, OS_USER)
            shutil.chown(pwfile, OS_USER, OS_USER)
        pwfile.chmod(0o600)
        subprocess.run([*_as_server_user(), str(bin_dir() / "initdb"), "-D", str(data), "-U", USER,
                        f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                       check=True, capture_output=True, timeout=120)
    finally:
        pwfile.unlink(missing_ok=True)
    return True


def server_argv(settings: Settings) -> list[str]:
    return [*_as_server_user(), str(bin_dir() / "postgres"), "-D", str(cluster_dir(settings)),
            "-p", str(settings.postgres_port), "-c", f"listen_addresses={settings.host}",
            "-c", "unix_socket_directories=", "-c", "max_connections=100", "-c", "shared_buffers=128MB",
            "-c", "fsync=on", "-c", "logging_collector=off"]


def _psql(settings: Settings, sql: str, database: str = "postgres") -> str:
    env = {**os.environ, "PGPASSWORD": password(settings)}
    proc = subprocess.run([str(bin_dir() / "psql"), "-h", settings.host, "-p", str(settings.postgres_port),
                           "-U", USER, "-d", database, "-tAc", sql], env=env, capture_output=True, text=True,
                          timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"psql: {proc.stderr.strip()}")
    return proc.stdout.strip()


def ready(settings: Settings) -> bool:
    try:
        return _psql(settings, "SELECT 1") == "1"
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        return False


def create_database(settings: Settings, name: str) -> None:
    """Create database ``name`` (letters, digits, underscores) unless it exists."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name {name!r}: use letters, digits and underscores")
    if _psql(settings, f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":
        _psql(settings, f'CREATE DATABASE "{name}"')


def create_databases(settings: Settings) -> None:
    for name in DATABASES:
        create_database(settings, name)
