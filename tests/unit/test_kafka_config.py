"""The local Kafka's configuration follows the settings: listeners, log dir, per-topic retention."""
from pathlib import Path

from infra import kafka
from usersignals.settings import Settings


def test_one_kraft_node_listens_where_the_settings_say(tmp_path):
    s = Settings(broker_port=19092, controller_port=19093, data_dir=tmp_path)
    props = kafka.server_properties(s)
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert Path(props["log.dirs"]) == tmp_path / "kafka"
    assert props["auto.create.topics.enable"] == "false"


def test_each_topic_has_its_time_and_size_retention():
    s = Settings(events_retention_hours=24, dlq_retention_hours=48, topic_retention_mb=100)
    configs = kafka.topic_configs(s)
    assert set(configs) == {"user_events", "user_events_enriched", "user_events_dlq", "served_features"}
    assert configs["user_events"] == {"retention.ms": str(24 * 3600_000), "retention.bytes": str(100 * 1024 * 1024)}
    assert configs["user_events_enriched"]["retention.ms"] == str(24 * 3600_000)
    assert configs["user_events_dlq"]["retention.ms"] == str(48 * 3600_000)


def test_the_broker_runs_the_maven_jars_with_the_exporter_agent(tmp_path, monkeypatch):
    jars = tmp_path / "jars" / "kafka"
    jars.mkdir(parents=True)
    (jars / "jmx_prometheus_javaagent-1.0.1.jar").touch()
    monkeypatch.setattr(kafka, "JARS_DIR", tmp_path / "jars")
    monkeypatch.setattr(kafka, "jars", lambda group: sorted((tmp_path / "jars" / group).glob("*.jar")))
    argv = kafka.broker_argv(Settings(broker_metrics_port=19254, data_dir=tmp_path))
    assert argv[0] == "java" and argv[-2:] == ["kafka.Kafka", str(tmp_path / "kafka-config" / "server.properties")]
    assert argv[argv.index("-cp") + 1] == f"{jars}/*"
    agent = next(a for a in argv if a.startswith("-javaagent:"))
    assert agent.startswith(f"-javaagent:{jars}/jmx_prometheus_javaagent-1.0.1.jar=127.0.0.1:19254:")


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch):
    import uuid

    ids = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(ids))
    cid = kafka.cluster_id()
    assert len(cid) == 22 and not cid.startswith("-") and cid == "AQEBAQEBAQEBAQEBAQEBAQ"
