"""Entry point of the real-time indexing job: Kafka → IndexEvents → KV, DLQ, enriched topic and the lake, on Flink.

Run with the streaming environment's Python::

    .venv-streaming/bin/python -m streaming.job

Settings come from ``USERSIGNALS_*`` variables (see ``usersignals.settings``): the broker,
the KV store (``kv_url``, ``kv_cluster``), the checkpoint and savepoint directories. The job
resumes from its newest retained checkpoint when those are on local disk (under a Kubernetes
operator, the operator restores it), else from the consumer group's committed offsets (earliest
when there are none); it checkpoints every ``checkpoint_interval_ms`` and commits offsets on
each checkpoint.
Every indexed event is also produced, enriched, to ``enriched_topic``. Iceberg's Flink sink
(``streaming.lake_sql``) writes ``raw_events``, ``enriched_events``, ``dead_letters`` and,
from its topic, ``served_features``, committing on each checkpoint: exactly once.
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
from urllib.parse import urlparse

from usersignals import lake
from usersignals.settings import REPO_ROOT, Settings, jars, load_settings

log = logging.getLogger("usersignals.job")
HELPERS_JAR = REPO_ROOT / "build" / "usersignals-flink.jar"
DLQ_MAX_RECORD_BYTES = 64 * 1024 * 1024


def local_dir(uri: str) -> Path | None:
    """The directory of a ``file://`` URI (None for object storage: s3://, gs://, ...)."""
    u = urlparse(uri)
    return Path(u.path) if u.scheme in ("file", "") else None


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
    # Hadoop (which Iceberg's Flink catalog and file IO load) must be on the JVM's own class path:
    # Flink resolves org.apache.hadoop.* parent-first, never from user jars. PyFlink's gateway
    # reads HADOOP_CLASSPATH when it starts the JVM, which the first Configuration() does.
    hadoop = [j for j in jars("flink") if j.name.startswith("hadoop-")]
    os.environ["HADOOP_CLASSPATH"] = ":".join(str(j) for j in hadoop)
    user_jars = [HELPERS_JAR, *(j for j in jars("flink") if j not in hadoop)]
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
    conf.set_string("execution.checkpointing.dir", settings.checkpoint_dir)
    conf.set_string("execution.checkpointing.savepoint-dir", settings.savepoint_dir)
    conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    conf.set_string("execution.checkpointing.num-retained", "2")
    checkpoints = local_dir(settings.checkpoint_dir)
    restore = latest_checkpoint(checkpoints) if checkpoints is not None else None
    if restore is not None:
        log.info("restoring from checkpoint %s", restore)
        conf.set_string("execution.state-recovery.path", f"file://{restore}")
        conf.set_string("execution.state-recovery.ignore-unclaimed-state", "true")
    os.environ["_python_worker_execution_mode"] = settings.python_worker_mode
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(settings.parallelism)
    # Exactly-once barriers: the Iceberg committer must see every writer's files of a checkpoint
    # before the checkpoint's barrier (the KV writes stay at-least-once and are deduplicated).
    env.enable_checkpointing(settings.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    return env


def table_environment(env):
    from pyflink.table import StreamTableEnvironment

    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    return t_env


def enriched_feature_fields(t_env, settings: Settings) -> list[tuple[str, str]]:
    """enriched_events' item-feature columns, as the lake's catalog has them now."""
    from streaming.lake_sql import feature_columns, table_path

    j_table = getattr(t_env._j_tenv, "from")(table_path(settings, lake.ENRICHED_EVENTS))  # `from` is Python's
    schema = j_table.getResolvedSchema()
    return feature_columns([(c.getName(), c.getDataType().toString()) for c in schema.getColumns()])


def build_pipeline(env, settings: Settings, registry_path: str | None) -> None:
    from streaming import lake_sql
    from streaming.functions import row_type

    t_env = table_environment(env)
    t_env.execute_sql(lake_sql.catalog_ddl(settings))
    feature_fields = enriched_feature_fields(t_env, settings)
    from pyflink.common import WatermarkStrategy
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
        IndexEvents(settings.kv_url, settings.kv_prefix, registry_path, settings.events_topic, settings.kv_cluster,
                    settings.broker, settings.enriched_topic, tuple(feature_fields)),
        output_type=row_type(lake_sql.INDEXED_FIELDS + tuple(feature_fields)),
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
    dead_letters = indexed.get_side_output(DLQ_TAG)
    dead_letters.sink_to(KafkaSink(j_sink)).name("kafka:" + settings.dlq_topic).uid("dlq-sink")

    # The lake: one INSERT per table into Iceberg's Flink sink, in the same job (same checkpoints).
    t_env.create_temporary_view("indexed_rows", t_env.from_data_stream(indexed))
    t_env.create_temporary_view("dead_letter_rows", t_env.from_data_stream(dead_letters))
    t_env.execute_sql(lake_sql.served_source_ddl(settings))
    inserts = t_env.create_statement_set()
    inserts.add_insert_sql(lake_sql.raw_insert(settings, "indexed_rows"))
    inserts.add_insert_sql(lake_sql.enriched_insert(settings, "indexed_rows", [f for f, _ in feature_fields]))
    inserts.add_insert_sql(lake_sql.dlq_insert(settings, "dead_letter_rows"))
    inserts.add_insert_sql(lake_sql.served_insert(settings))
    inserts.attach_as_datastream()


LAKE_TABLES = (lake.RAW_EVENTS, lake.ENRICHED_EVENTS, lake.DEAD_LETTERS, lake.SERVED_FEATURES)
LAKE_POLL_S = 15.0


def java_catalog(settings: Settings):
    """The lake's catalog as Iceberg's Java API has it, in the driver's JVM (the job's jars)."""
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    options = lake.flink_catalog_options(settings)
    impl = options.get("catalog-impl", "org.apache.iceberg.rest.RESTCatalog")
    props = jvm.java.util.HashMap()
    for k, v in options.items():
        if k not in ("type", "catalog-impl", "catalog-type"):
            props.put(k, v)
    return jvm.org.apache.iceberg.CatalogUtil.loadCatalog(impl, settings.lake_catalog, props,
                                                         jvm.org.apache.hadoop.conf.Configuration())


def monitor_lake(settings: Settings, stop: threading.Event) -> None:
    """Publish each lake table's newest commit, rows and files (``LakeMetrics``) until ``stop``,
    in a thread of its own. The Java objects are made here, on the calling (main) thread: py4j
    resolves class names with the serving Java thread's class loader, and only the main
    thread's has the job's jars."""
    from pyflink.java_gateway import get_gateway

    from streaming.metrics import LakeMetrics

    parse = get_gateway().jvm.org.apache.iceberg.catalog.TableIdentifier.parse
    idents = {table: parse(lake.table_id(settings, table)) for table in LAKE_TABLES}
    catalog = java_catalog(settings)   # its JDBC pool reconnects after a database outage
    metrics = LakeMetrics()

    def loop() -> None:
        while not stop.is_set():
            try:
                for table, ident in idents.items():
                    snap = catalog.loadTable(ident).currentSnapshot()
                    if snap is not None:
                        summary = snap.summary()
                        metrics.observe(table, snap.timestampMillis(), int(summary.get("total-records") or 0),
                                        int(summary.get("total-data-files") or 0))
            except Exception as exc:  # the catalog is down or slow: say so, try again next round
                metrics.poll_errors.inc()
                log.warning("lake monitor: %s", str(exc).splitlines()[0][:300])
            stop.wait(LAKE_POLL_S)

    threading.Thread(target=loop, name="lake-monitor", daemon=True).start()


def serve_metrics(settings: Settings, multiproc_dir: Path) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))
    start_http_server(settings.job_metrics_port, addr=settings.bind_host, registry=registry)


def parser() -> argparse.ArgumentParser:
    # No options: everything comes from settings (a Redis Cluster too: USERSIGNALS_KV_CLUSTER).
    return argparse.ArgumentParser(prog="streaming.job", description=__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    parser().parse_args(argv)
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
    build_pipeline(env, settings, registry_path)
    client = env.execute_async("usersignals-indexer")
    log.info("submitted job %s (parallelism %d, %s workers, bundle %d/%dms, metrics :%d)",
             client.get_job_id(), settings.parallelism, settings.python_worker_mode,
             settings.bundle_size, settings.bundle_time_ms, settings.job_metrics_port)

    stop = threading.Event()
    monitor_lake(settings, stop)

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
