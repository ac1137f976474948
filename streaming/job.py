"""Entry point of the real-time indexing job: Kafka → IndexEvents → KV (+ DLQ, + enriched topic) on Flink.

Run with the streaming environment's Python::

    .venv-streaming/bin/python -m streaming.job

Settings come from ``USERSIGNALS_*`` variables (see ``usersignals.settings``). The job
resumes from the consumer group's committed offsets (earliest when there are none),
checkpoints every ``checkpoint_interval_ms`` and commits offsets on each checkpoint.
Every indexed event is also produced, enriched, to ``enriched_topic``; the lake sink
(``streaming.lake_sink``) lands that and the other topics in Iceberg.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from usersignals.settings import REPO_ROOT, Settings, jars, load_settings

log = logging.getLogger("usersignals.job")
HELPERS_JAR = REPO_ROOT / "build" / "usersignals-flink.jar"
DLQ_MAX_RECORD_BYTES = 64 * 1024 * 1024


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest completed checkpoint (a chk-N directory with its _metadata) of any run."""
    done = [m.parent for m in checkpoints.glob("*/chk-*/_metadata")]
    return max(done, key=lambda d: d.stat().st_mtime, default=None)


def build_environment(settings: Settings):
    from pyflink.common import Configuration
    from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment

    tmp = settings.data_dir / "flink-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    # Flink itself comes with PyFlink's wheel; the Kafka connector and its client from Maven
    # Central (build/jars/flink), shipped with the job's helpers as user jars.
    if not HELPERS_JAR.exists():
        raise SystemExit(f"missing jar {HELPERS_JAR}; run `make install` to build it")
    user_jars = [HELPERS_JAR, *jars("flink")]
    conf = Configuration()
    conf.set_string("pipeline.jars", ";".join(f"file://{j}" for j in user_jars))
    conf.set_string("io.tmp.dirs", str(tmp))
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    conf.set_string("python.fn-execution.bundle.size", str(settings.bundle_size))
    conf.set_string("python.fn-execution.bundle.time", str(settings.bundle_time_ms))
    # Records leave an operator within 10 ms (Flink waits up to 100 ms to fill a network buffer).
    conf.set_string("execution.buffer-timeout.interval", "10 ms")
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", "2147483647")
    conf.set_string("restart-strategy.fixed-delay.delay", "2 s")
    conf.set_string("pipeline.name", "usersignals-indexer")
    # Retained checkpoints (with the source's offsets) are what a restarted job resumes from;
    # the offsets committed to the broker on each checkpoint are the fallback and the lag signal.
    checkpoints = settings.data_dir / "checkpoints"
    conf.set_string("execution.checkpointing.dir", f"file://{checkpoints}")
    conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    conf.set_string("execution.checkpointing.num-retained", "2")
    restore = latest_checkpoint(checkpoints)
    if restore is not None:
        log.info("restoring from checkpoint %s", restore)
        conf.set_string("execution.state-recovery.path", f"file://{restore}")
        conf.set_string("execution.state-recovery.ignore-unclaimed-state", "true")
    os.environ["_python_worker_execution_mode"] = settings.python_worker_mode
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(settings.parallelism)
    env.enable_checkpointing(settings.checkpoint_interval_ms, CheckpointingMode.AT_LEAST_ONCE)
    return env


def build_pipeline(env, settings: Settings, registry_path: str | None, kv_cluster: bool = False) -> None:
    from pyflink.common import WatermarkStrategy
    from pyflink.common.typeinfo import Types
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSink, KafkaSource
    from pyflink.java_gateway import get_gateway

    from streaming.functions import DLQ_TAG, IndexEvents

    jvm = get_gateway().jvm
    kafka_init = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer
    # The Python wrapper of committed_offsets() names classes of the fat SQL connector jar,
    # absent here; build the same initializer through the Java API.
    starting = KafkaOffsetsInitializer(kafka_init.OffsetsInitializer.committedOffsets(
        jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy.EARLIEST))
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.broker)
        .set_topics(settings.events_topic)
        .set_group_id(settings.consumer_group)
        .set_client_id_prefix("usersignals-indexer")
        .set_starting_offsets(starting)
        .set_property("commit.offsets.on.checkpoint", "true")
        # A fetch answers when 64 KB are there or the wait is up: under load, a few large fetches
        # rather than one per handful of records; when idle, the wait bounds the added latency.
        .set_property("fetch.max.wait.ms", str(settings.source_fetch_wait_ms))
        .set_property("fetch.min.bytes", str(64 << 10))
        .set_property("partition.discovery.interval.ms", "60000")
    )
    builder._j_builder.setDeserializer(jvm.usersignals.flink.RawRecordDeserializer())
    source = builder.build()

    # Stable uids map checkpointed state (the source's offsets) back to operators on restore.
    records = env.from_source(source, WatermarkStrategy.no_watermarks(), "kafka:" + settings.events_topic) \
        .uid("events-source")
    indexed = records.process(
        IndexEvents(settings.kv_url, settings.kv_prefix, registry_path, settings.events_topic, kv_cluster,
                    settings.broker, settings.enriched_topic),
        output_type=Types.STRING(),
    ).name("validate-enrich-index").uid("validate-enrich-index")

    sink_builder = jvm.org.apache.flink.connector.kafka.sink.KafkaSink.builder()
    j_sink = (
        sink_builder.setBootstrapServers(settings.broker)
        .setRecordSerializer(jvm.usersignals.flink.DeadLetterSerializer(settings.dlq_topic))
        .setDeliveryGuarantee(jvm.org.apache.flink.connector.base.DeliveryGuarantee.AT_LEAST_ONCE)
        .setProperty("linger.ms", "5")
        .setProperty("enable.idempotence", "true")
        # A rejected record goes to the DLQ byte for byte, however large it is (the source
        # accepts what the broker accepts): Kafka's 1 MiB default would fail the job on it.
        .setProperty("max.request.size", str(DLQ_MAX_RECORD_BYTES))
        .build()
    )
    indexed.get_side_output(DLQ_TAG).sink_to(KafkaSink(j_sink)).name("kafka:" + settings.dlq_topic) \
        .uid("dlq-sink")


def serve_metrics(settings: Settings, multiproc_dir: Path) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))
    start_http_server(settings.job_metrics_port, addr=settings.host, registry=registry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kv-cluster", action="store_true", help="the KV URL points at a Redis Cluster")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()

    # Python workers inherit this and write their metrics there; the driver serves the sum.
    multiproc = settings.data_dir / "job-metrics"
    shutil.rmtree(multiproc, ignore_errors=True)
    multiproc.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    serve_metrics(settings, multiproc)

    # The JVM's own log (task failures with their Java causes) next to the stack's logs, not
    # inside the virtual environment.
    os.environ.setdefault("FLINK_LOG_DIR", str(settings.log_dir / "flink"))
    env = build_environment(settings)
    registry_path = str(settings.registry_path) if settings.registry_path else None
    build_pipeline(env, settings, registry_path, args.kv_cluster)
    client = env.execute_async("usersignals-indexer")
    log.info("submitted job %s (parallelism %d, %s workers, bundle %d/%dms, metrics :%d)",
             client.get_job_id(), settings.parallelism, settings.python_worker_mode,
             settings.bundle_size, settings.bundle_time_ms, settings.job_metrics_port)

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: cancelling the job", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    last = None
    while not stop.is_set():
        status = str(client.get_job_status().result())
        if status != last:
            log.info("job status %s", status)
            last = status
        if status in ("FAILED", "FINISHED", "CANCELED"):
            return 1 if status == "FAILED" else 0
        stop.wait(1.0)
    try:
        client.cancel().result()
    except Exception as exc:  # already gone: nothing left to cancel
        log.warning("cancel: %s", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
