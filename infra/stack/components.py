"""The local stack: Kafka, KV server, PostgreSQL, indexing job, trimmer, API, Prometheus (+ generator, Trino).

Everything runs on 127.0.0.1 as child processes of one supervisor, each in its own
process group, logging to ``<data_dir>/logs/<name>.log``. A component is "ready" when
its health check passes; the job is ready when a canary event produced to the topic
can be read back from the KV layer, which proves the whole path. A component that
dies is restarted with backoff. Stopping goes in reverse order: SIGTERM, then SIGKILL.

    python -m infra.stack run     # foreground with the generator; Ctrl-C stops everything
    python -m infra.stack up      # background (make up); `down` stops it; --trino adds Trino
    python -m infra.stack status
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infra import kafka, postgres, trino
from usersignals.settings import MAIN_PYTHON, REPO_ROOT, Settings, load_settings

STREAMING_PY = REPO_ROOT / ".venv-streaming" / "bin" / "python"
CANARY_USER = "__usersignals_canary__"


def _say(msg: str) -> None:
    # stderr: benchmarks and scripts keep stdout for their results.
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_settings(data_dir: Path, **over) -> Settings:
    """Settings for a stack of one's own (tests, benchmarks): free ports and ``data_dir``,
    so a running `make up` stack is left alone."""
    ports = {name: free_port() for name in
             ("broker_port", "controller_port", "broker_metrics_port", "kv_port", "postgres_port", "api_port",
              "job_metrics_port", "node_exporter_port", "prometheus_port", "trino_port")}
    return load_settings().with_overrides(**{**ports, "data_dir": data_dir, **over})


def metric_total(port: int, name: str, host: str = "127.0.0.1") -> float | None:
    """Sum of a metric's samples (all label sets) on a Prometheus endpoint; None if unreachable."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Component:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    ports: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 30.0
    on_ready: Callable[[], None] | None = None
    before_start: Callable[[], None] | None = None
    restart: bool = True
    stop_timeout_s: float | None = None   # grace before SIGKILL (default: stop()'s)
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_restart_at: float = 0.0


class Stack:
    """Starts, watches and stops the local stack's processes."""

    def __init__(self, settings: Settings | None = None, with_generator: bool = False,
                 generator_rate: float = 1000.0, components: tuple[str, ...] | None = None,
                 env: dict[str, dict[str, str]] | None = None, with_trino: bool = False,
                 trino_timeout_s: float = trino.STARTUP_TIMEOUT_S):
        """``env``: extra environment variables by component name (e.g. ``{"api": {...}}``).
        ``with_trino``: also run a Trino server over the lake (``components`` may name it too)."""
        self.settings = settings or load_settings()
        self.with_generator = with_generator
        self.with_trino = with_trino or "trino" in (components or ())
        self.trino_timeout_s = trino_timeout_s
        self.generator_rate = generator_rate
        self.only = components
        self.extra_env = env or {}
        self.components: list[Component] = []
        self.stopping = False
        self.log_dir = self.settings.log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # --- environment shared by every child ---------------------------------------
    def child_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(s.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def define(self) -> list[Component]:
        s = self.settings
        kv_dir = s.data_dir / "kv"
        kv_dir.mkdir(parents=True, exist_ok=True)
        trimmer_port = int(os.environ.get("USERSIGNALS_TRIMMER_METRICS_PORT", s.job_metrics_port + 1))
        comps: list[Component] = [
            Component(
                "broker", kafka.broker_argv(s), ready=lambda: port_open(s.host, s.broker_port),
                ports=(s.broker_port, s.controller_port, s.broker_metrics_port), before_start=self.format_broker,
                on_ready=lambda: kafka.ensure_topics(s), ready_timeout_s=60.0,
            ),
            Component(
                "kv",
                ["redis-server", "--bind", s.host, "--port", str(s.kv_port), "--dir", str(kv_dir),
                 "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                 "--protected-mode", "no", "--daemonize", "no"],
                ready=self.kv_ready, ports=(s.kv_port,),
            ),
            Component(
                # Airflow's metadata database and the lake's catalog. SIGINT is PostgreSQL's fast shutdown: SIGTERM would
                # wait for every client (Airflow's pools) to disconnect first.
                "postgres", postgres.server_argv(s), ready=lambda: postgres.ready(s), ports=(s.postgres_port,),
                before_start=lambda: postgres.init_cluster(s), on_ready=lambda: postgres.create_databases(s),
                stop_signal=signal.SIGINT,
            ),
            Component(
                # It writes the lake too: its tables exist (and have the registry's columns) first.
                "job", [str(STREAMING_PY), "-m", "streaming.job"],
                ready=self.canary_visible, ports=(s.job_metrics_port,), ready_timeout_s=120.0,
                before_start=self.migrate_lake,
            ),
            Component(
                "trimmer", [str(MAIN_PYTHON), "-m", "usersignals.trimmer"],
                ready=lambda: port_open(s.host, trimmer_port), ports=(trimmer_port,),
                env={"USERSIGNALS_TRIMMER_METRICS_PORT": str(trimmer_port)},
            ),
            Component(
                "api", [str(MAIN_PYTHON), "-m", "serving"],
                ready=lambda: self.http_ok(f"http://{s.host}:{s.api_port}/readyz"), ports=(s.api_port,),
            ),
        ]
        if shutil.which("prometheus") and shutil.which("prometheus-node-exporter"):
            metrics_dir = s.data_dir / "metrics"
            metrics_dir.mkdir(parents=True, exist_ok=True)
            comps += [
                Component(
                    "node-exporter",
                    ["prometheus-node-exporter", f"--web.listen-address={s.host}:{s.node_exporter_port}",
                     "--collector.disable-defaults", "--collector.textfile",
                     f"--collector.textfile.directory={metrics_dir}"],
                    ready=lambda: port_open(s.host, s.node_exporter_port), ports=(s.node_exporter_port,),
                ),
                Component(
                    "prometheus",
                    ["prometheus", f"--config.file={s.data_dir / 'prometheus' / 'prometheus.yml'}",
                     f"--storage.tsdb.path={s.data_dir / 'prometheus' / 'data'}",
                     f"--web.listen-address={s.host}:{s.prometheus_port}", "--storage.tsdb.retention.time=7d",
                     "--web.enable-lifecycle", "--log.level=warn"],
                    ready=lambda: self.http_ok(f"http://{s.host}:{s.prometheus_port}/-/ready"),
                    ports=(s.prometheus_port,), before_start=lambda: self.write_prometheus_config(trimmer_port),
                ),
            ]
        if self.with_trino:
            comps.append(Component(
                "trino", trino.argv(s), ready=lambda: trino.ready(s), ports=(s.trino_port,),
                ready_timeout_s=self.trino_timeout_s, before_start=self.migrate_lake,
            ))
        if self.with_generator:
            comps.append(Component(
                "generator", [str(MAIN_PYTHON), "-m", "infra.generator", "--rate", str(self.generator_rate),
                              "--bad-share", "0.002"],
                ready=lambda: True, restart=False,
            ))
        if self.only:
            wanted = set(self.only)
            if wanted & {"job", "trino"} and not s.lake_catalog_uri and not postgres.ready(s):
                wanted.add("postgres")  # the lake's catalog is the stack's PostgreSQL: not up yet
            comps = [c for c in comps if c.name in wanted]
        return comps

    def format_broker(self) -> None:
        """Format Kafka's log dir on first start. A new log has fresh offsets, so the job's
        retained checkpoints (offsets into the old topics) must not be restored."""
        if kafka.format_storage(self.settings):
            shutil.rmtree(self.settings.data_dir / "checkpoints", ignore_errors=True)

    @staticmethod
    def http_ok(url: str) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except Exception:
            return False

    def kv_ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=self.settings.host, port=self.settings.kv_port,
                                    socket_timeout=1).ping())
        except Exception:
            return False

    def write_prometheus_config(self, trimmer_port: int) -> Path:
        """prometheus.yml scraping every component of this stack, with the alert rules."""
        s = self.settings
        targets = {"api": s.api_port, "indexer": s.job_metrics_port, "trimmer": trimmer_port, "broker": s.broker_metrics_port,
                   "prometheus": s.prometheus_port}
        jobs = [{"job_name": name, "static_configs": [{"targets": [f"{s.host}:{port}"]}]}
                for name, port in targets.items()]
        # The batch jobs' own `job` label must survive: honor it.
        jobs.append({"job_name": "batch", "honor_labels": True,
                     "static_configs": [{"targets": [f"{s.host}:{s.node_exporter_port}"]}]})
        config = {"global": {"scrape_interval": "5s", "evaluation_interval": "15s"},
                  "rule_files": [str(REPO_ROOT / "infra" / "prometheus" / "alerts.yml")],
                  "scrape_configs": jobs}
        path = s.data_dir / "prometheus" / "prometheus.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def migrate_lake(self) -> None:
        """Create or evolve the Iceberg tables before anything writes to them."""
        subprocess.run([str(MAIN_PYTHON), "-m", "iceberg_schemas"], cwd=REPO_ROOT, env=self.child_env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def canary_visible(self) -> bool:
        """Produce a canary event and see it come out of the KV layer: the whole path works."""
        from confluent_kafka import Producer
        import orjson
        import redis

        from usersignals.kv import SequenceStore
        from usersignals.registry import load_registry

        s = self.settings
        if not hasattr(self, "_canary"):  # set up once; the check is polled until ready
            registry = load_registry(s.registry_path)
            self._canary = f"canary-{uuid.uuid4().hex[:12]}"
            self._canary_sent = 0.0
            self._canary_type = next(iter(registry.event_types))
            self._canary_dataset = registry.dataset_for_type(self._canary_type).name
            self._canary_store = SequenceStore(redis.Redis(host=s.host, port=s.kv_port, socket_timeout=1),
                                               registry, s.kv_prefix)
            self._canary_producer = Producer({"bootstrap.servers": s.broker, "enable.idempotence": True})
        dataset = self._canary_dataset
        try:
            rows = self._canary_store.read(CANARY_USER, {dataset: 5})[dataset]
        except Exception:
            return False
        if any(orjson.loads(r)["event_id"] == self._canary for r in rows):
            del self._canary  # a later check starts over, with a new canary
            self._canary_producer = None  # no client left reconnecting once the broker stops
            return True
        if time.monotonic() - self._canary_sent > 5:
            p = self._canary_producer
            p.produce(s.events_topic, key=CANARY_USER.encode(), value=orjson.dumps({
                "event_id": self._canary, "user_id": CANARY_USER, "event_type": self._canary_type,
                "item_id": "canary", "ts": int(time.time() * 1000), "surface": "canary"}))
            p.flush(5)
            self._canary_sent = time.monotonic()
        return False

    # --- lifecycle ----------------------------------------------------------------
    def _spawn(self, c: Component) -> None:
        log = open(self.log_dir / f"{c.name}.log", "ab", buffering=0)
        log.write(f"\n=== {time.strftime('%F %T')} start {' '.join(c.argv)}\n".encode())
        env = self.child_env({**c.env, **self.extra_env.get(c.name, {})})
        c.proc = subprocess.Popen(c.argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def start(self) -> None:
        self.stopping = False
        self.components = self.define()
        for c in self.components:
            for port in c.ports:
                if port_open(self.settings.host, port):
                    self.stop()
                    raise SystemExit(f"port {port} ({c.name}) is already in use: stop what holds it "
                                     f"(`make down`?) or choose another port with USERSIGNALS_*_PORT")
            _say(f"starting {c.name}")
            if c.before_start:
                c.before_start()
            self._spawn(c)
            deadline = time.monotonic() + c.ready_timeout_s
            while not c.ready():
                if c.proc.poll() is not None:
                    self.stop()
                    raise SystemExit(f"{c.name} exited with code {c.proc.returncode} before it was ready; "
                                     f"see {self.log_dir / (c.name + '.log')}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"{c.name} was not ready within {c.ready_timeout_s:.0f}s; "
                                     f"see {self.log_dir / (c.name + '.log')}")
                time.sleep(0.2)
            if c.on_ready:
                c.on_ready()
            _say(f"{c.name} ready (pid {c.proc.pid})")

    def watch_once(self) -> None:
        """Restart components that died (with backoff); called by the supervisor loop."""
        now = time.monotonic()
        for c in self.components:
            if self.stopping or c.proc is None or c.proc.poll() is None or not c.restart:
                continue
            if c.next_restart_at == 0.0:
                try:  # what it started may outlive it (the API's workers hold its port): not into the restart
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                delay = min(30.0, 2.0 ** min(c.restarts, 5))
                c.next_restart_at = now + delay
                _say(f"{c.name} exited with code {c.proc.returncode}; restarting in {delay:.0f}s")
            elif now >= c.next_restart_at:
                c.restarts += 1
                c.next_restart_at = 0.0
                self._spawn(c)

    def stop(self, timeout_s: float = 20.0) -> None:
        self.stopping = True  # a supervisor thread still calling watch_once() must not restart anything
        for c in reversed(self.components):
            if c.proc is None or c.proc.poll() is not None:
                continue
            _say(f"stopping {c.name}")
            try:
                os.killpg(c.proc.pid, c.stop_signal)
            except ProcessLookupError:
                continue
            grace = timeout_s if c.stop_timeout_s is None else c.stop_timeout_s
            try:
                c.proc.wait(grace)
            except subprocess.TimeoutExpired:
                _say(f"{c.name} did not stop in {grace:.0f}s; killing it")
            try:  # the group may still hold children (Flink's JVM and Python workers)
                os.killpg(c.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            c.proc.wait()

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def banner(self) -> str:
        s = self.settings
        return "\n".join([
            "usersignals local stack is ready:",
            f"  API          http://{s.host}:{s.api_port}/docs   (try /v1/datasets,"
            f" /v1/users/u0/events?type=view&limit=5)",
            f"  API metrics  http://{s.host}:{s.api_port}/metrics",
            f"  job metrics  http://{s.host}:{s.job_metrics_port}/metrics",
            f"  Kafka        {s.broker}  topics {s.events_topic}, {s.enriched_topic}, {s.dlq_topic},"
            f" {s.served_topic}  (log {kafka.log_dir(s)}, metrics :{s.broker_metrics_port})",
            f"  lake         Iceberg catalog {lake_location(s)}, warehouse {s.warehouse}",
            f"  KV (Redis)   {s.kv_url}",
            f"  PostgreSQL   {s.host}:{s.postgres_port}  (Airflow's metadata, the lake's catalog; user {postgres.USER},"
            f" password in {s.data_dir / 'postgres.password'})",
            *([f"  Trino        {trino.url(s)}  (make trino-cli: catalog {s.lake_catalog}, schema {s.lake_namespace})"]
              if self.with_trino else []),
            f"  Prometheus   http://{s.host}:{s.prometheus_port}  (alerts: infra/prometheus/alerts.yml;"
            f" dashboard: infra/grafana/usersignals.json)",
            f"  logs         {self.log_dir}/",
        ])


def lake_location(settings: Settings) -> str:
    """The catalog's address without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(settings.catalog_uri)
    if parts.password:
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
    return settings.catalog_uri


def _pidfile(settings: Settings) -> Path:
    return settings.data_dir / "stack.pid"


def supervise(stack: Stack, state_file: Path | None = None) -> int:
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    try:
        stack.start()
    except SystemExit as exc:
        if state_file:
            state_file.write_text(json.dumps({"state": "failed", "error": str(exc)}))
        raise
    print(stack.banner(), flush=True)
    if state_file:
        state_file.write_text(json.dumps({"state": "ready", "pid": os.getpid()}))
    try:
        while not stopping:
            stack.watch_once()
            time.sleep(0.5)
    finally:
        _say("shutting down")
        stack.stop()
        if state_file:
            state_file.unlink(missing_ok=True)
        _say("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the usersignals local stack.")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run in the foreground with the event generator (Ctrl-C stops)")
    run.add_argument("--rate", type=float, default=1000.0, help="generator events per second")
    run.add_argument("--no-generator", action="store_true")
    run.add_argument("--trino", action="store_true", help="also run Trino over the lake")
    up = sub.add_parser("up", help="start in the background")
    up.add_argument("--generator", action="store_true", help="also run the event generator")
    up.add_argument("--rate", type=float, default=1000.0)
    up.add_argument("--trino", action="store_true", help="also run Trino over the lake")
    sub.add_parser("down", help="stop the background stack")
    sub.add_parser("status", help="is the background stack running?")
    sub.add_parser("supervise", help=argparse.SUPPRESS).add_argument("--generator", action="store_true")
    sub.choices["supervise"].add_argument("--rate", type=float, default=1000.0)
    sub.choices["supervise"].add_argument("--trino", action="store_true")
    args = p.parse_args(argv)
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pidfile = _pidfile(settings)

    if args.cmd == "run":
        return supervise(Stack(settings, with_generator=not args.no_generator, generator_rate=args.rate,
                               with_trino=args.trino))
    if args.cmd == "supervise":
        return supervise(Stack(settings, with_generator=args.generator, generator_rate=args.rate,
                               with_trino=args.trino), pidfile)
    if args.cmd == "up":
        if pidfile.exists():
            print(f"the stack is already running (state in {pidfile}); `make down` first")
            return 1
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(settings.log_dir / "stack.log", "ab")
        cmd = [sys.executable, "-m", "infra.stack", "supervise", "--rate", str(args.rate)]
        if args.generator:
            cmd.append("--generator")
        if args.trino:
            cmd.append("--trino")
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        wait_s = 240 + (trino.STARTUP_TIMEOUT_S if args.trino else 0)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if pidfile.exists():
                state = json.loads(pidfile.read_text() or "{}")
                if state.get("state") == "ready":
                    print(Stack(settings, with_trino=args.trino).banner())
                    print("stop it with `make down`")
                    return 0
                if state.get("state") == "failed":
                    pidfile.unlink(missing_ok=True)
                    print(f"the stack failed to start: {state.get('error')}")
                    return 1
            if proc.poll() is not None:
                print(f"the stack failed to start; see {settings.log_dir / 'stack.log'}")
                pidfile.unlink(missing_ok=True)
                return 1
            time.sleep(0.5)
        print(f"the stack did not become ready in {wait_s:.0f}s; stopping it")
        os.kill(proc.pid, signal.SIGTERM)
        return 1
    if args.cmd == "down":
        if not pidfile.exists():
            print("the stack is not running")
            return 0
        pid = json.loads(pidfile.read_text() or "{}").get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(120):
                    os.kill(pid, 0)
                    time.sleep(0.5)
            except ProcessLookupError:
                pass
        pidfile.unlink(missing_ok=True)
        print("the stack is stopped")
        return 0
    if args.cmd == "status":
        if pidfile.exists():
            print(pidfile.read_text())
            return 0
        print("the stack is not running")
        return 3
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
