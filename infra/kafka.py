"""Apache Kafka for the local stack: one KRaft node (broker and controller in one process).

The jars come from Maven Central (profile ``kafka`` of ``infra/pom.xml``, copied into
``build/jars/kafka`` by ``make install``) and run on the default JDK. The log lives in
``<data_dir>/kafka`` and survives a restart of the stack; it is formatted once, on first start.
Its metrics reach Prometheus through the JMX exporter agent (``infra/kafka/jmx-exporter.yaml``).

Topics are created by the stack with their partition counts and per-topic retention
(``topic_configs``); an existing topic gets its retention updated to the settings' values. The
events topic stamps its records with the broker's append time (``timestamp_configs``).
"""
from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from usersignals.settings import JARS_DIR, REPO_ROOT, Settings, jars

CONFIG_DIR = REPO_ROOT / "infra" / "kafka"
# A record up to this size is accepted, so the job can dead-letter an oversized event with its
# reason instead of the producer failing it (the job's own limit is far smaller).
MAX_MESSAGE_BYTES = 8 << 20
# Kafka's own launcher flags, with GC threads capped: two cores carry the whole stack.
JVM_FLAGS = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
             "-XX:ParallelGCThreads=1", "-XX:ConcGCThreads=1", "-Djava.awt.headless=true"]


def log_dir(settings: Settings) -> Path:
    return settings.data_dir / "kafka"


def config_path(settings: Settings) -> Path:
    return settings.data_dir / "kafka-config" / "server.properties"


def server_properties(settings: Settings) -> dict[str, str]:
    s = settings
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{s.host}:{s.controller_port}",
        "listeners": f"PLAINTEXT://{s.host}:{s.broker_port},CONTROLLER://{s.host}:{s.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{s.host}:{s.broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir(s)),
        # One node: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Topics are created by the stack with their partitions and retention, never by a typo.
        "auto.create.topics.enable": "false",
        "num.partitions": str(s.topic_partitions),
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        # Smaller segments than the 1 GiB default, so size and time retention drop data in steps
        # of 128 MiB; retention is checked every minute.
        "log.segment.bytes": str(128 << 20),
        "log.retention.check.interval.ms": "60000",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Each topic the platform uses, with its retention (time and size per partition)."""
    hour_ms = 3600 * 1000
    size = str(settings.topic_retention_mb << 20)

    def retention(hours: int) -> dict[str, str]:
        return {"retention.ms": str(hours * hour_ms), "retention.bytes": size}

    return {
        settings.events_topic: retention(settings.events_retention_hours),
        settings.enriched_topic: retention(settings.events_retention_hours),
        settings.served_topic: retention(settings.events_retention_hours),
        settings.dlq_topic: retention(settings.dlq_retention_hours),
    }


# The broker's clock, not the producer's, stamps each record of the events topic (a producer may
# set the event time there): the job's ingestion lag, which the lag and freshness alerts watch,
# is measured from it, so valid late events do not page anyone.
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}


def timestamp_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topics whose records carry the broker's append time instead of the producer's."""
    return {settings.events_topic: APPEND_TIME}


def _java(main_class: str, *args: str, flags: list[str] | None = None) -> list[str]:
    cp = f"{JARS_DIR / 'kafka'}/*"
    log4j = f"-Dlog4j2.configurationFile={CONFIG_DIR / 'log4j2.yaml'}"
    return ["java", *(flags or []), log4j, "-cp", cp, main_class, *args]


def write_config(settings: Settings) -> Path:
    path = config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in server_properties(settings).items()))
    return path


def cluster_id() -> str:
    """A random cluster id in Kafka's form (base64url of 16 bytes). Like Kafka's own, never one
    that starts with '-': the format command would take it for an option (1 id in 64)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def format_storage(settings: Settings) -> bool:
    """Format the log directory for KRaft if it is new; True if it was formatted now."""
    config = write_config(settings)
    if (log_dir(settings) / "meta.properties").exists():
        return False
    shutil.rmtree(log_dir(settings), ignore_errors=True)
    proc = subprocess.run(_java("kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(config)),
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"formatting the Kafka log dir failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return True


def broker_argv(settings: Settings) -> list[str]:
    agent = next(j for j in jars("kafka") if j.name.startswith("jmx_prometheus_javaagent"))
    exporter = f"-javaagent:{agent}={settings.host}:{settings.broker_metrics_port}:{CONFIG_DIR / 'jmx-exporter.yaml'}"
    return _java("kafka.Kafka", str(config_path(settings)), flags=[*JVM_FLAGS, exporter])


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the platform's topics that are missing; set every topic's retention (and the events
    topic's timestamp type) to the settings'."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.broker})
    timestamps = timestamp_configs(settings)
    wanted = {t: {**cfg, **timestamps.get(t, {})} for t, cfg in topic_configs(settings).items()}
    deadline = time.monotonic() + timeout_s
    while True:
        existing = set(admin.list_topics(timeout=10).topics)
        todo = [NewTopic(t, num_partitions=settings.topic_partitions, replication_factor=1, config=cfg)
                for t, cfg in wanted.items() if t not in existing]
        errors = []
        for topic, fut in (admin.create_topics(todo).items() if todo else ()):
            try:
                fut.result(10)
            except Exception as exc:  # created meanwhile by another client: fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    errors.append(f"{topic}: {exc}")
        if not errors:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not create topics: {errors}")
        time.sleep(0.5)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in cfg.items()])
        for t, cfg in wanted.items() if t in existing]
    for res, fut in (admin.incremental_alter_configs(resources).items() if resources else ()):
        fut.result(10)
