"""Outside clients on the platform's Kafka: Debian's kcat and kafka-python produce to the events
topic and read the dead-letter topic; what they produce is served by the API."""
import json
import subprocess
import time
import uuid

import httpx
import orjson
import pytest

from infra.stack import Stack, private_settings
from tests.integration.conftest import event, new_user, now_ms, wait_until
from usersignals.producer import EventProducer, InvalidEvent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    settings = private_settings(tmp_path_factory.mktemp("clients"), checkpoint_interval_ms=1000)
    stack = Stack(settings, components=("broker", "kv", "job", "api"))
    stack.start()
    yield stack
    stack.stop()


def served(settings, user, etype="click", limit=20) -> list[str]:
    r = httpx.get(f"http://{settings.host}:{settings.api_port}/v1/users/{user}/events",
                  params={"type": etype, "limit": limit}, headers={"X-Admin-Key": settings.admin_key}, timeout=5)
    r.raise_for_status()
    return [e["event_id"] for e in r.json()["events"]]


def kcat(settings, *args, stdin: bytes | None = None, timeout=60) -> bytes:
    proc = subprocess.run(["kcat", "-b", settings.broker, *args], input=stdin, capture_output=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.stdout


def dlq_reasons_kcat(settings, key: str) -> dict[str, str]:
    """event_id (or raw value) -> dlq.reason of the DLQ records with this key, read by kcat."""
    out = kcat(settings, "-C", "-t", settings.dlq_topic, "-o", "beginning", "-e", "-J", "-q")
    found = {}
    for line in out.decode().splitlines():
        rec = json.loads(line)
        if rec.get("key") != key:
            continue
        headers = rec.get("headers") or []
        found[rec["payload"]] = dict(zip(headers[::2], headers[1::2]))["dlq.reason"]
    return found


def test_kcat_produces_events_that_are_served_and_bad_ones_reach_the_dlq(stack):
    s = stack.settings
    user = new_user()
    t = now_ms()
    good = [event(user, n, t + n) for n in range(3)]
    bad = f'{{"event_id": "{user}-bad", "user_id": "{user}"}}'  # no event_type, item_id, ts
    lines = [f"{user}\t{orjson.dumps(e).decode()}" for e in good] + [f"{user}\t{bad}"]
    kcat(s, "-P", "-t", s.events_topic, "-K", "\t", stdin=("\n".join(lines) + "\n").encode())

    ids = wait_until(lambda: served(s, user) if len(served(s, user)) == 3 else None, 90, 0.3, "kcat's events served")
    assert ids == [f"{user}-2", f"{user}-1", f"{user}-0"]
    reasons = wait_until(lambda: dlq_reasons_kcat(s, user) or None, 60, 0.5, "kcat's bad record in the DLQ")
    assert reasons == {bad: "missing_field"}


def test_kafka_python_producer_validates_keys_and_is_served(stack):
    s = stack.settings
    user = new_user()
    t = now_ms()
    with EventProducer(s.broker, topic=s.events_topic) as events:
        futures = [events.send(event(user, n, t + n, etype="view", item=f"i{n}")) for n in range(5)]
        for f in futures:
            assert f.get(timeout=30).topic == s.events_topic
        with pytest.raises(InvalidEvent) as bad_type:
            events.send(event(user, 99, t, etype="hover"))
        assert bad_type.value.reason == "unknown_event_type"
        with pytest.raises(InvalidEvent) as bad_ts:
            events.send({**event(user, 98, t), "ts": "yesterday"})
        assert bad_ts.value.reason == "bad_type"

    ids = wait_until(lambda: served(s, user, "view") if len(served(s, user, "view")) == 5 else None, 90, 0.3,
                     "kafka-python's events served")
    assert ids == [f"{user}-{n}" for n in (4, 3, 2, 1, 0)]


def test_kafka_python_reads_the_dead_letters_it_caused(stack):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    s = stack.settings
    user = f"kp-{uuid.uuid4().hex[:8]}"
    raw = KafkaProducer(bootstrap_servers=s.broker, acks="all", enable_idempotence=True)
    sent = {b"not json at all": "not_json",
            orjson.dumps(event(user, 1, 0, etype="hover")): "ts_out_of_range",
            orjson.dumps(event("someone-else", 2, now_ms())): "key_mismatch"}
    for value in sent:
        raw.send(s.events_topic, key=user.encode(), value=value).get(timeout=30)
    raw.close()

    consumer = KafkaConsumer(bootstrap_servers=s.broker, enable_auto_commit=False, consumer_timeout_ms=1000)
    consumer.assign([TopicPartition(s.dlq_topic, p) for p in range(s.topic_partitions)])
    consumer.seek_to_beginning()
    got: dict[bytes, str] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(got) < len(sent):
        for msg in consumer:
            if msg.key == user.encode():
                headers = {k: v.decode() for k, v in msg.headers}
                got[msg.value] = headers["dlq.reason"]
                assert headers["dlq.source.topic"] == s.events_topic
    consumer.close()
    assert got == sent
