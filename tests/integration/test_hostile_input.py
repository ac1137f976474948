"""Hostile input at volume: 10k bad records of every kind mixed into good traffic. Every good
event is indexed; every bad one reaches the DLQ with its reason, bytes untouched; the DLQ
metric counts them; the job never stops."""
import random
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from infra.stack import metric_total
from tests.integration.conftest import now_ms, wait_until
from usersignals.kv import decode_all

pytestmark = pytest.mark.integration

MB = 1 << 20


def hostile(user: str, n: int, t: int, rng: random.Random) -> tuple[bytes | None, bytes, str]:
    """The n-th bad record: (key, value, the reason the DLQ must give)."""
    good = {"event_id": f"{user}-bad{n}", "user_id": user, "event_type": "click", "item_id": "i", "ts": t}
    key = user.encode()
    kind = n % 12
    if kind == 0:
        return key, b"{\"event_id\": \"x\", " + bytes(rng.randrange(256) for _ in range(20)), "not_json"
    if kind == 1:
        dropped = rng.choice(["item_id", "event_id", "ts"])
        return key, orjson.dumps({k: v for k, v in good.items() if k != dropped}), "missing_field"
    if kind == 2:
        return key, orjson.dumps({**good, "ts": str(t)}), "bad_type"
    if kind == 3:
        return key, orjson.dumps({**good, "dwell_ms": [1]}), "bad_type"
    if kind == 4:
        return key, orjson.dumps({**good, "event_type": "hover" * 13}), "bad_value"             # 65 chars
    if kind == 5:
        return key, orjson.dumps({**good, "ts": 0}), "ts_out_of_range"                    # 1970
    if kind == 6:
        return key, orjson.dumps({**good, "ts": 32503680000000}), "ts_out_of_range"       # year 3000
    if kind == 7:
        return key, orjson.dumps({**good, "item_id": "i\u0000tem"}), "bad_value"          # NUL byte
    if kind == 8:
        return key, orjson.dumps({**good, "item_id": "x" * 5000}), "bad_value"            # huge id
    if kind == 9:
        return key, b'{"event_id": "\xed\xa0\x80", "user_id": "u"}', "not_json"           # lone surrogate
    if kind == 10:
        return b"someone-else", orjson.dumps(good), "key_mismatch"
    return key, orjson.dumps([good]), "not_object"


def test_ten_thousand_bad_records_go_to_the_dlq_and_good_traffic_flows(pipeline, store):
    s = pipeline.settings
    rng = random.Random(1)
    user = f"hostile-{uuid.uuid4().hex[:8]}"
    good_user = f"good-{uuid.uuid4().hex[:8]}"
    t = now_ms() - 5000
    dlq_before = metric_total(s.job_metrics_port, "usersignals_indexer_dlq_total") or 0.0
    p = Producer({"bootstrap.servers": s.broker, "linger.ms": 5, "message.max.bytes": 4 * MB,
                  "queue.buffering.max.messages": 200_000})
    expected: dict[bytes, str] = {}
    n_bad = 10_000
    for n in range(n_bad):
        key, value, reason = hostile(user, n, t, rng)
        value = value + b" " * 0  # bytes as produced
        p.produce(s.events_topic, key=key, value=value)
        expected[value] = reason
        if n % 10 == 0:  # good traffic in between: one good event per ten bad ones
            ev = {"event_id": f"{good_user}-{n}", "user_id": good_user, "event_type": "view", "item_id": f"i{n}",
                  "ts": t + n, "query": "caf\u00e9 \U0001f600 \u202e"}
            p.produce(s.events_topic, key=good_user.encode(), value=orjson.dumps(ev))
        if n % 2000 == 0:
            p.poll(0)
    big = [b'{"event_id": "' + b"a" * MB + b'"}', b"\x00" * MB]  # 1 MiB payloads
    for value in big:
        p.produce(s.events_topic, key=user.encode(), value=value)
        expected[value] = "too_large"
    assert p.flush(60) == 0

    c = Consumer({"bootstrap.servers": s.broker, "group.id": f"hostile-{time.time()}", "enable.auto.commit": False,
                  "fetch.message.max.bytes": 4 * MB})
    c.assign([TopicPartition(s.dlq_topic, part, 0) for part in range(s.topic_partitions)])
    got: dict[bytes, str] = {}
    deadline = time.monotonic() + 180
    mine = {user.encode(), b"someone-else"}
    while time.monotonic() < deadline and len(got) < len(expected):
        for m in c.consume(5000, 0.5):
            if m.error() is None and m.key() in mine and m.value() in expected:
                got[m.value()] = dict(m.headers())["dlq.reason"].decode()
    c.close()
    missing = [(expected[v], v[:80]) for v in expected if v not in got]
    import collections
    assert not missing, f"{len(missing)} bad records not in the DLQ: {collections.Counter(r for r, _ in missing)}, " \
        f"e.g. {missing[:3]}; got {len(got)} of {len(expected)}"
    wrong = {(expected[v], r) for v, r in got.items() if r != expected[v]}
    assert not wrong, wrong
    assert sum(1 for r in got.values() if r == "too_large") == 2

    n_good = n_bad // 10
    wait_until(lambda: store.length("views", good_user) >= min(n_good, 200), 120, 0.5, "good events indexed")
    rows = decode_all(store.read(good_user, {"views": 200})["views"])
    assert rows[0]["event_id"] == f"{good_user}-{n_bad - 10}" and rows[0]["query"] == "caf\u00e9 \U0001f600 \u202e"
    dlq_after = metric_total(s.job_metrics_port, "usersignals_indexer_dlq_total")
    assert dlq_after - dlq_before >= len(expected)
