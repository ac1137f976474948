"""One definition per part of the local stack: Kafka, the KV server (Redis), PostgreSQL, the indexing
job, the trimmer, the API, Prometheus and its node exporter (+ the event generator, Trino): how each
starts, when it counts as ready, what it needs first and what it does once up.

The job is ready when a canary event produced to the topic can be read back from the KV layer,
which proves the whole path.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from infra import kafka, postgres, trino
from infra.stack.probes import free_port, http_ok, port_open
from infra.stack.supervisor import Component, Supervisor
from usersignals.settings import MAIN_PYTHON, REPO_ROOT, Settings, load_settings

STREAMING_PY = REPO_ROOT / ".venv-streaming" / "bin" / "python"
CANARY_USER = "__usersignals_canary__"


def private_settings(data_dir: Path, **over) -> Settings:
    """Settings for a stack of one's own (tests, benchmarks): free ports and ``data_dir``,
    so a running `make up` stack is left alone."""
    ports = {name: free_port() for name in
             ("broker_port", "controller_port", "broker_metrics_port", "kv_port", "postgres_port", "api_port",
              "job_metrics_port", "trimmer_metrics_port", "airflow_port", "node_exporter_port", "prometheus_port",
              "trino_port")}
    return load_settings().with_overrides(**{**ports, "data_dir": data_dir, **over})


class Stack(Supervisor):
    """The local stack's components, supervised."""

    def __init__(self, settings: Settings | None = None, with_generator: bool = False,
                 generator_rate: float = 1000.0, components: tuple[str, ...] | None = None,
                 env: dict[str, dict[str, str]] | None = None, with_trino: bool = False,
                 trino_timeout_s: float = trino.STARTUP_TIMEOUT_S):
        """``components``: run only these (by name). ``env``: extra environment variables by component
        name (e.g. ``{"api": {...}}``). ``with_trino``: also run a Trino server over the lake
        (``components`` may name it too)."""
        super().__init__(settings or load_settings(), env)
        self.with_generator = with_generator
        self.with_trino = with_trino or "trino" in (components or ())
        self.trino_timeout_s = trino_timeout_s
        self.generator_rate = generator_rate
        self.only = components

    def define(self) -> list[Component]:
        s = self.settings
        kv_dir = s.data_dir / "kv"
        kv_dir.mkdir(parents=True, exist_ok=True)
        trimmer_port = s.trimmer_metrics_port
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
            ),
            Component(
                "api", [str(MAIN_PYTHON), "-m", "serving"],
                ready=lambda: http_ok(f"http://{s.host}:{s.api_port}/readyz"), ports=(s.api_port,),
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
                    ready=lambda: http_ok(f"http://{s.host}:{s.prometheus_port}/-/ready"),
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
            checkpoints = urlparse(self.settings.checkpoint_dir)
            if checkpoints.scheme == "file":   # the job's own (object storage is not the local stack's)
                shutil.rmtree(checkpoints.path, ignore_errors=True)

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

        from usersignals.kv import SequenceStore, connect
        from usersignals.registry import load_registry

        s = self.settings
        if not hasattr(self, "_canary"):  # set up once; the check is polled until ready
            registry = load_registry(s.registry_path)
            self._canary = f"canary-{uuid.uuid4().hex[:12]}"
            self._canary_sent = 0.0
            self._canary_type = next(iter(registry.event_types))
            self._canary_dataset = registry.dataset_for_type(self._canary_type).name
            # Where the job writes: the stack's redis-server, or any KV store settings name (a cluster).
            self._canary_store = SequenceStore(connect(s, socket_timeout=1), registry, s.kv_prefix)
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

    def banner(self) -> str:
        s = self.settings
        return "\n".join([
            "usersignals local stack is ready:",
            f"  API          http://{s.host}:{s.api_port}/docs   (try /v1/datasets; with a tenant's X-API-Key,"
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
