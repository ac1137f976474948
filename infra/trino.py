"""Trino for analysts' SQL over the lake: one local node, from Maven Central's archives.

    python -m infra.trino          # `make trino`: Trino alone on the settings' lake (Ctrl-C stops)
    python -m infra.trino cli      # `make trino-cli`: the Trino CLI on that server, catalog and schema
    python -m infra.trino config   # write the configuration (<data_dir>/trino/etc) and print where

``make install`` copies ``io.trino:trino-server-core`` (tar.gz), the ``io.trino:trino-iceberg``
plugin (zip) and the ``io.trino:trino-cli`` executable jar into ``build/jars/trino``
(infra/pom.xml, profile ``trino``). ``ensure_unpacked`` unpacks the server into
``build/trino/trino-server-<version>`` with the plugin in its ``plugin/iceberg``.

The configuration is ``infra/trino/local/`` (templates; ``{{field}}`` filled in from the settings)
rendered into ``<data_dir>/trino/etc`` by ``render_config``: one node that is the coordinator and
schedules work on itself, a 4 GB heap for this 2-core, 24 GB machine, and catalog
``settings.lake_catalog``: the Iceberg connector on the lake's JDBC catalog in the stack's
PostgreSQL (``usersignals.lake.jdbc``), the same catalog every other engine writes.

Trino 476 needs Java 24 or newer; it runs on Temurin 25 (``java_home``), whatever the default
``java`` is (17, for Kafka, Flink and Spark). ``argv`` runs the server in the foreground (Trino's
launcher ``run`` replaces itself with the JVM), so SIGTERM stops it; ``ready`` is its
``/v1/info`` saying it is no longer starting, and a first query answering.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

from usersignals.settings import JARS_DIR, REPO_ROOT, Settings, load_settings

VERSION = "476"
ARCHIVES = JARS_DIR / "trino"
SERVER_ARCHIVE = ARCHIVES / f"trino-server-core-{VERSION}.tar.gz"
ICEBERG_PLUGIN = ARCHIVES / f"trino-iceberg-{VERSION}.zip"
CLI_JAR = ARCHIVES / f"trino-cli-{VERSION}-executable.jar"
BUILD_DIR = REPO_ROOT / "build" / "trino"
TEMPLATES = REPO_ROOT / "infra" / "trino" / "local"
# Trino 476 runs on Java 24+; Temurin's JDK, which Trino is tested with. The setting trino_java_home
# (USERSIGNALS_TRINO_JAVA_HOME) overrides the search.
MIN_JAVA = 24
STARTUP_TIMEOUT_S = 180.0


# --- installation ------------------------------------------------------------------------------
def install_dir(settings: Settings | None = None) -> Path:
    """Where the server is unpacked (the same for every settings: the configuration is apart)."""
    return BUILD_DIR / f"trino-server-{VERSION}"


def _stamp() -> str:
    return json.dumps({p.name: p.stat().st_size for p in (SERVER_ARCHIVE, ICEBERG_PLUGIN)}, sort_keys=True)


def ensure_unpacked() -> Path:
    """Unpack the server and its Iceberg plugin once (a marker records which archives); idempotent
    and safe to call from concurrent processes (a lock file)."""
    target = install_dir()
    marker = target / ".unpacked"
    for archive in (SERVER_ARCHIVE, ICEBERG_PLUGIN):
        if not archive.exists():
            raise FileNotFoundError(f"{archive} is missing; run `make install` (infra/pom.xml, profile trino)")
    want = _stamp()
    if marker.exists() and marker.read_text() == want:
        return target
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == want:  # another process did it meanwhile
            return target
        staging = BUILD_DIR / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        with tarfile.open(SERVER_ARCHIVE) as tar:
            tar.extractall(staging, filter="data")
        (top,) = staging.iterdir()  # trino-server-core-<version>/
        plugin = top / "plugin" / "iceberg"
        plugin.mkdir(parents=True)
        with zipfile.ZipFile(ICEBERG_PLUGIN) as z:
            for info in z.infolist():  # trino-iceberg-<version>/<jar>: the jars go straight in plugin/iceberg
                name = info.filename.split("/", 1)[1] if "/" in info.filename else ""
                if not name or info.is_dir():
                    continue
                if "/" in name or name.startswith("."):
                    raise ValueError(f"unexpected entry {info.filename!r} in {ICEBERG_PLUGIN.name}")
                with z.open(info) as src, open(plugin / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        shutil.rmtree(target, ignore_errors=True)
        top.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        marker.write_text(want)
    return target


def _java_major(home: Path) -> int:
    release = home / "release"
    if not release.exists():
        return 0
    m = re.search(r'^JAVA_VERSION="(\d+)', release.read_text(), re.M)
    return int(m.group(1)) if m else 0


def java_home(settings: Settings) -> Path:
    """A JDK that runs Trino: the setting trino_java_home, else the newest Temurin 24+ in /usr/lib/jvm."""
    if settings.trino_java_home:
        home = Path(settings.trino_java_home)
        if _java_major(home) < MIN_JAVA:
            raise SystemExit(f"trino_java_home (USERSIGNALS_TRINO_JAVA_HOME) is {home}: Trino {VERSION} needs Java {MIN_JAVA}+")
        return home
    found = sorted((p for p in Path("/usr/lib/jvm").glob("*") if p.is_dir() and _java_major(p) >= MIN_JAVA),
                   key=lambda p: (_java_major(p), "temurin" in p.name))
    if not found:
        raise SystemExit(f"Trino {VERSION} needs Java {MIN_JAVA}+ (Temurin 25 in /usr/lib/jvm/temurin-25-jdk-amd64); "
                         "none found, set USERSIGNALS_TRINO_JAVA_HOME")
    return found[-1]


# --- configuration -----------------------------------------------------------------------------
def trino_dir(settings: Settings) -> Path:
    return settings.data_dir / "trino"


def etc_dir(settings: Settings) -> Path:
    return trino_dir(settings) / "etc"


def data_dir(settings: Settings) -> Path:
    return trino_dir(settings) / "data"


def filesystem_properties(warehouse: str) -> list[str]:
    """The file-system lines of the catalog for the warehouse's scheme.

    A local warehouse (``file:///…``, as pyiceberg, Spark and Flink write table and data file
    locations): Trino's native local file system, rooted at ``/``. It takes locations of the
    ``file`` (and ``local``) scheme and reads ``file:///a/b`` as ``<root>/a/b``, so the absolute
    paths the other engines wrote resolve as they are. The Hadoop file system
    (``fs.hadoop.enabled``) is no option here: Trino loads it from an ``hdfs/`` directory of the
    plugin, which Maven Central's trino-iceberg zip lacks (the server does not start: "HDFS
    directory is missing").
    """
    scheme = warehouse.split("://", 1)[0] if "://" in warehouse else "file"
    if scheme == "file":
        return ["fs.native-local.enabled=true", "local.location=/"]
    if scheme in ("s3", "s3a", "s3n"):
        return ["fs.native-s3.enabled=true"]
    if scheme in ("gs",):
        return ["fs.native-gcs.enabled=true"]
    if scheme in ("abfs", "abfss"):
        return ["fs.native-azure.enabled=true"]
    raise ValueError(f"warehouse {warehouse!r}: no Trino file system for scheme {scheme!r}")


def template_values(settings: Settings) -> dict[str, str]:
    from usersignals import lake

    if settings.lake_catalog_type != "sql":
        raise SystemExit("the local Trino reads the JDBC (sql) catalog; for a REST catalog use "
                         "infra/trino/coordinator/catalog/lake.properties")
    j = lake.jdbc(settings)
    return {
        "host": settings.host, "port": str(settings.trino_port), "data_dir": str(data_dir(settings)),
        "catalog": settings.lake_catalog, "jdbc_url": _escape(j.url), "jdbc_user": _escape(j.user),
        "jdbc_password": _escape(j.password),
        "warehouse": settings.warehouse, "filesystem": "\n".join(filesystem_properties(settings.warehouse)),
    }


def _escape(value: str) -> str:
    """A value as a Java properties file reads it back (backslash is its escape character)."""
    return value.replace("\\", "\\\\")


_FIELD = re.compile(r"\{\{(\w+)\}\}")


def render(text: str, values: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template field {{{{{m.group(1)}}}}} has no value")
        return values[m.group(1)]

    return _FIELD.sub(sub, text)


def render_config(settings: Settings) -> Path:
    """Write ``<data_dir>/trino/etc`` from infra/trino/local/ and return it. The catalog file
    (it holds the catalog database's password) is readable by its owner only."""
    values = template_values(settings)
    etc = etc_dir(settings)
    shutil.rmtree(etc, ignore_errors=True)
    (etc / "catalog").mkdir(parents=True)
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    for name in ("config.properties", "node.properties", "jvm.config", "log.properties"):
        (etc / name).write_text(render((TEMPLATES / name).read_text(), values))
    catalog = etc / "catalog" / f"{settings.lake_catalog}.properties"
    fd = os.open(catalog, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render((TEMPLATES / "catalog" / "lake.properties").read_text(), values))
    return etc


def argv(settings: Settings) -> list[str]:
    """The server in the foreground: the launcher's ``run`` execs the JVM of ``java_home(settings)``
    (SIGTERM stops it). Unpacks and renders the configuration first."""
    home = ensure_unpacked()
    etc = render_config(settings)
    return [str(home / "bin" / "launcher"), "run", f"--etc-dir={etc}", f"--data-dir={data_dir(settings)}",
            f"--jvm-dir={java_home(settings)}"]


def url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.trino_port}"


def info(settings: Settings, timeout: float = 1.0) -> dict | None:
    """The server's ``/v1/info`` (version, starting, ...), or None if nothing answers there."""
    try:
        with urllib.request.urlopen(f"{url(settings)}/v1/info", timeout=timeout) as r:
            body = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def ready(settings: Settings) -> bool:
    """Up and done starting (``/v1/info`` says ``starting: false``), and a query that scans the
    lake runs: right after startup the coordinator may answer ``SELECT 1`` yet not see itself
    as a node to schedule a table scan on (NO_NODES_AVAILABLE)."""
    body = info(settings)
    if not body or body.get("starting", True):
        return False
    try:
        import trino

        with trino.dbapi.connect(host=settings.host, port=settings.trino_port, user=settings.trino_user,
                                 request_timeout=10) as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            if cur.fetchall() != [[1]]:
                return False
            try:
                cur.execute(f'SELECT count(*) FROM "{settings.lake_catalog}"."{settings.lake_namespace}"."raw_events"')
                cur.fetchall()
            except trino.exceptions.TrinoUserError as exc:  # no lake tables yet: nothing to scan
                return exc.error_name in ("TABLE_NOT_FOUND", "SCHEMA_NOT_FOUND")
            return True
    except Exception:
        return False


def cli_argv(settings: Settings) -> list[str]:
    """The Trino CLI (executable jar) on the server, the lake's catalog and schema."""
    # (JLine loads its native terminal library: allowed, so Java 25 does not warn about it.)
    return [str(java_home(settings) / "bin" / "java"), "--enable-native-access=ALL-UNNAMED", "-jar", str(CLI_JAR),
            "--server", url(settings), "--user", settings.trino_user, "--catalog", settings.lake_catalog, "--schema", settings.lake_namespace]


class Server:
    """A Trino server of one's own (tests, benchmarks, ``main``): the stack's ``trino`` component
    alone (``infra.stack``), so it starts, waits and stops as in ``make up TRINO=1``; the lake's
    tables are created first if need be. Its log is ``<data_dir>/logs/trino.log``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.log_path = settings.log_dir / "trino.log"
        self.startup_s: float | None = None
        self._stack = None

    @property
    def proc(self) -> subprocess.Popen | None:
        return self._stack.component("trino").proc if self._stack and self._stack.components else None

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> "Server":
        from infra.stack import Stack

        self._stack = Stack(self.settings, components=("trino",), trino_timeout_s=timeout_s)
        started = time.monotonic()
        self._stack.start()
        self.startup_s = time.monotonic() - started
        return self

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.stop()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv_: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.trino", description="Trino over the usersignals lake")
    p.add_argument("cmd", nargs="?", choices=["run", "cli", "config"], default="run",
                   help="run the server (default), open the CLI on it, or print the rendered config dir")
    args, rest = p.parse_known_args(argv_)
    settings = load_settings()
    if args.cmd == "cli":  # further arguments go to the CLI (e.g. --execute "SELECT ...")
        if not CLI_JAR.exists():
            raise SystemExit(f"{CLI_JAR} is missing; run `make install`")
        os.execv(str(java_home(settings) / "bin" / "java"), cli_argv(settings) + rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.cmd == "config":
        print(render_config(settings))
        return 0

    # Server runs the stack's trino component, which creates the lake's tables if need be and
    # brings the stack's PostgreSQL (the catalog) along when it is not up (`make up` runs it).
    server = Server(settings)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        print(f"[trino] starting Trino {VERSION} on {url(settings)} (log {server.log_path})", file=sys.stderr,
              flush=True)
        server.start()
        print(f"Trino is ready at {url(settings)} in {server.startup_s:.0f}s: catalog {settings.lake_catalog}, "
              f"schema {settings.lake_namespace}\n  CLI:  make trino-cli   (or: {' '.join(cli_argv(settings))})\n"
              "  Ctrl-C stops it", flush=True)
        return server.proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
