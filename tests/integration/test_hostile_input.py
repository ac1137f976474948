"""Hostile input at volume: 10k bad records of every kind mixed into good traffic. Every good
event is indexed; every bad one reaches the DLQ with its reason, bytes untouched; the DLQ
metric counts them; the job never stops. And ids that could name another user's keys or break
a pattern are refused at every edge: the job (DLQ ``invalid_id``) and the API (400)."""
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
# Characters no id may hold (usersignals/ids.py), one of each kind.
HOSTILE_CHARS = ["{", "}", ":", "*", "?", "[", "]", "\\", "'", '"', "`", "/", " ", "\u00a0", "\u200b", "\u202e"]


def hostile(user: str, n: int, t: int, rng: random.Random) -> tuple[bytes | None, bytes, str]:
    """The n-th bad record: (key, value, the reason the DLQ must give)."""
    good = {"event_id": f"{user}-bad{n}", "user_id": user, "event_type": "click", "item_id": "i", "ts": t}
    key = user.encode()
    kind = n % 14
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
    if kind == 12:  # an id that would name another user's keys: us:{<user>}:views}:clicks:z
        return key, orjson.dumps({**good, "user_id": f"{user}}}:views"}), "invalid_id"
    if kind == 13:  # glob, quote, slash, space in the other ids
        field = rng.choice(["item_id", "event_id"])
        return key, orjson.dumps({**good, field: f"{good[field]}{rng.choice(HOSTILE_CHARS)}x"}), "invalid_id"
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


# Ids that would name another user's keys, match others in a SCAN, or break a quoted literal.
HOSTILE_IDS = ["hx9261d92c}:views", "a}", "{a}", "u:1", "u*", "u?", "[u]", "u\\1", "u'1", 'u"1', "u`1", "u 1",
               "u\u00a01", "u\u200b1", "u\t1", ""]


@pytest.fixture
def api(kv_server, registry):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.feature_log import FeatureLogger

    with TestClient(create_app(kv_server.settings, registry, feature_logger=FeatureLogger(None, "x"))) as client:
        yield client


HOME = {"X-API-Key": "homefeed-dev-key"}


def admin(api):
    return {"X-Admin-Key": api.app.state.settings.admin_key}


def refused(r, status=400, *fragments):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["error"] == "bad_request" and all(f in body["message"] for f in fragments), body
    return body["message"]


@pytest.mark.parametrize("user", HOSTILE_IDS)
def test_the_api_refuses_a_hostile_user_id_naming_it_and_the_rule(api, user):
    from urllib.parse import quote

    r = api.post("/v1/features", json={"tenant": "homefeed_ranking", "user_ids": ["u1", user]}, headers=HOME)
    expected = "must not be empty" if not user else repr(user)
    refused(r, 400, "user id", expected)
    if user:  # a path cannot be empty
        r = api.delete(f"/v1/admin/users/{quote(user, safe='')}", headers=admin(api))
        refused(r, 400, "user_id", expected)


@pytest.mark.parametrize("item", ["i*", "i:1", "i}", "i 1", "i/1", "i'1"])
def test_the_api_refuses_a_hostile_excluded_item(api, item):
    r = api.post("/v1/features", json={"tenant": "homefeed_ranking", "user_ids": ["u1"], "exclude_items": [item]},
                 headers=HOME)
    refused(r, 400, "excluded item id", repr(item))


@pytest.mark.parametrize("tenant", ["home}feed", "homefeed_ranking:x", "Homefeed_ranking", "homefeed ranking", "*"])
def test_the_api_refuses_a_tenant_that_is_not_a_name(api, tenant):
    r = api.post("/v1/features", json={"tenant": tenant, "user_ids": ["u1"]}, headers=HOME)
    refused(r, 400, "tenant", repr(tenant), "lowercase")


def test_ids_the_rule_allows_are_served_and_erased(api):
    from urllib.parse import quote

    for user in ["a.b+c@x.com", "ユーザー🙂", "#%&=,;!$~", "x" * 256]:
        r = api.post("/v1/features", json={"tenant": "homefeed_ranking", "user_ids": [user], "format": "json",
                                           "exclude_items": ["i-1.x@y"]}, headers=HOME)
        assert r.status_code == 200 and r.json()["users"][0]["user_id"] == user, r.text
        r = api.delete(f"/v1/admin/users/{quote(user, safe='')}", headers=admin(api))
        assert r.status_code == 202 and r.json()["user_id"] == user, r.text


def test_the_openapi_spec_states_the_rule(api):
    from usersignals import ids

    spec = api.get("/openapi.json").json()
    erase = spec["paths"]["/v1/admin/users/{user_id}"]["delete"]
    path_schema = next(p["schema"] for p in erase["parameters"] if p["name"] == "user_id")
    assert path_schema["pattern"] == ids.ID_PATTERN and path_schema["maxLength"] == ids.MAX_ID_CHARS
    body = spec["components"]["schemas"]["FeaturesRequest"]["properties"]
    assert body["user_ids"]["items"]["pattern"] == ids.ID_PATTERN
    assert body["exclude_items"]["items"]["pattern"] == ids.ID_PATTERN
    assert body["tenant"]["pattern"] == ids.NAME_PATTERN
