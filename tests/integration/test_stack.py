"""The local stack's own behaviour: the background trimmer process, restarts of dead parts, the
Kafka log kept across restarts."""
import os
import signal
import time

import orjson
import pytest

from infra.stack import Stack, private_settings
from usersignals.kv import SequenceStore, StoredEvent, connect

from .conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def kv_and_trimmer(tmp_path):
    # private_settings gives the trimmer a free metrics port; the stack hands both to its process
    stack = Stack(private_settings(tmp_path, trim_interval_s=0.2), components=("kv", "trimmer"))
    stack.start()
    yield stack
    stack.stop()


def test_the_trimmer_process_cuts_sequences_back_to_retention_in_the_background(kv_and_trimmer, registry):
    s = kv_and_trimmer.settings
    store = SequenceStore(connect(s.kv_url), registry, s.kv_prefix)
    n = registry.datasets["repins"].retention
    store.write([StoredEvent("repins", "u1", f"e{i}", i, orjson.dumps({"event_id": f"e{i}", "ts": i}))
                 for i in range(5 * n)])
    wait_until(lambda: store.length("repins", "u1") == n, timeout=15, message="trimmed to N")


def test_a_dead_component_is_restarted_by_the_supervisor(kv_and_trimmer):
    trimmer = kv_and_trimmer.component("trimmer")
    old_pid = trimmer.proc.pid
    os.killpg(old_pid, signal.SIGKILL)
    trimmer.proc.wait()

    def restarted():
        kv_and_trimmer.watch_once()
        return trimmer.proc.pid != old_pid and trimmer.proc.poll() is None and trimmer.ready()

    wait_until(restarted, timeout=20, message="trimmer restarted")
    assert trimmer.restarts == 1


def test_a_busy_port_is_a_clear_error(tmp_path, kv_and_trimmer):
    clash = kv_and_trimmer.settings.with_overrides(data_dir=tmp_path / "other")
    with pytest.raises(SystemExit, match="already in use"):
        Stack(clash, components=("kv",)).start()


def test_the_kafka_log_and_topic_retention_survive_a_restart_of_the_stack(tmp_path):
    """`make down` / `make up`: records stay in var/kafka; changed retention settings apply to
    the existing topics on the next start."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource

    settings = private_settings(tmp_path)
    stack = Stack(settings, components=("broker",))
    stack.start()
    try:
        p = Producer({"bootstrap.servers": settings.broker, "enable.idempotence": True})
        for i in range(10):
            p.produce(settings.dlq_topic, key=b"k", value=f"r{i}".encode())
        assert p.flush(15) == 0
    finally:
        stack.stop()

    restarted = Stack(settings.with_overrides(dlq_retention_hours=2), components=("broker",))
    restarted.start()
    try:
        c = Consumer({"bootstrap.servers": settings.broker, "group.id": "survives", "enable.auto.commit": False})
        c.assign([TopicPartition(settings.dlq_topic, part, 0) for part in range(settings.topic_partitions)])
        values = set()
        deadline = time.monotonic() + 30
        while len(values) < 10 and time.monotonic() < deadline:
            values |= {m.value() for m in c.consume(100, 0.5) if m.error() is None}
        c.close()
        assert values == {f"r{i}".encode() for i in range(10)}
        admin = AdminClient({"bootstrap.servers": settings.broker})
        res = ConfigResource(ConfigResource.Type.TOPIC, settings.dlq_topic)
        config = admin.describe_configs([res])[res].result()
        assert config["retention.ms"].value == str(2 * 3600 * 1000)
    finally:
        restarted.stop()
