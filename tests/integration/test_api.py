"""The read API on a real KV server."""
import orjson
import pytest
from fastapi.testclient import TestClient

from infra.stack import metric_sum
from serving.app import create_app
from serving.feature_log import FeatureLogger
from usersignals.kv import SequenceStore, StoredEvent

pytestmark = pytest.mark.integration

READER = {"X-API-Key": "homefeed-dev-key"}  # any registered tenant's key reads users' events


@pytest.fixture
def api(kv_server, kv_client, registry):
    store = SequenceStore(kv_client, registry, kv_server.settings.kv_prefix)
    for n in range(30):
        body = {"event_id": f"e{n}", "item_id": f"i{n}", "ts": 1000 + n, "features": {"category": "c1"}}
        store.write([StoredEvent("repins", "u1", f"e{n}", 1000 + n, orjson.dumps(body))])
    settings = kv_server.settings.with_overrides(read_key="reader-test-key", admin_key="admin-dev-key")
    with TestClient(create_app(settings, registry, feature_logger=FeatureLogger(None, "x"))) as client:
        yield client


def test_events_are_newest_first_with_enrichment(api):
    r = api.get("/v1/users/u1/events", params={"type": "repin", "limit": 3}, headers=READER)
    assert r.status_code == 200
    body = r.json()
    assert body["dataset"] == "repins"
    assert [e["event_id"] for e in body["events"]] == ["e29", "e28", "e27"]
    assert body["events"][0]["features"] == {"category": "c1"}


def test_default_limit_and_unknown_user(api):
    assert len(api.get("/v1/users/u1/events", params={"type": "repin"}, headers=READER).json()["events"]) == 20
    assert api.get("/v1/users/nobody/events", params={"type": "repin"}, headers=READER).json()["events"] == []


def test_a_limit_over_the_types_retention_serves_what_the_dataset_keeps(api, registry):
    # The spec states one maximum for limit (the largest retention: 200 in the default registry),
    # valid for every type: repins keep 20, so 21 to 200 get those 20 (of the 30 stored).
    assert max(d.retention for d in registry.datasets.values()) > 21
    for limit in (21, max(d.retention for d in registry.datasets.values())):
        r = api.get("/v1/users/u1/events", params={"type": "repin", "limit": limit}, headers=READER)
        assert r.status_code == 200, r.text
        assert [e["event_id"] for e in r.json()["events"]] == [f"e{n}" for n in range(29, 9, -1)]


@pytest.mark.parametrize("params,status,fragment", [
    ({"type": "hover"}, 404, "unknown event type 'hover'"),
    ({"type": "repin", "limit": 201}, 400, "limit=201: must be 1..200, the largest retention of any dataset "
                                           "('repins' keeps 20)"),
    ({"type": "repin", "limit": 0}, 400, "limit"),
    ({"type": "repin", "limit": "ten"}, 400, "limit"),
    ({}, 400, "type"),
])
def test_bad_requests_get_a_4xx_with_a_message(api, params, status, fragment):
    r = api.get("/v1/users/u1/events", params=params, headers=READER)
    assert r.status_code == status
    assert fragment in r.json()["message"]


@pytest.mark.parametrize("headers,status,fragment", [
    ({}, 401, "missing key: send a tenant's key in X-API-Key, the read-only key in X-Read-Key or the admin key"),
    ({"X-API-Key": "not-a-tenants-key"}, 403, "this key may not read user data"),
    ({"X-Read-Key": "not-the-read-key"}, 403, "this key may not read user data"),
    ({"X-Admin-Key": "not-the-admin-key"}, 403, "this key may not read user data"),
    ({"X-API-Key": "search-dev-key"}, 200, None),  # any registered tenant's key, not only a reader of repins
    ({"X-Read-Key": "reader-test-key"}, 200, None),
    ({"X-Admin-Key": "admin-dev-key"}, 200, None),
])
def test_a_users_events_need_a_tenants_key_the_read_key_or_the_admin_key(api, headers, status, fragment):
    r = api.get("/v1/users/u1/events", params={"type": "repin", "limit": 3}, headers=headers)
    assert r.status_code == status, r.text
    if fragment:
        assert fragment in r.json()["message"]
    else:
        assert [e["event_id"] for e in r.json()["events"]] == ["e29", "e28", "e27"]


def test_without_a_read_key_setting_no_read_key_is_accepted(kv_server, registry):
    settings = kv_server.settings.with_overrides(read_key="")
    with TestClient(create_app(settings, registry, feature_logger=FeatureLogger(None, "x"))) as client:
        for key in ("", "reader-test-key"):
            r = client.get("/v1/users/u1/events", params={"type": "repin"}, headers={"X-Read-Key": key})
            assert r.status_code == (401 if not key else 403), r.text


def test_datasets_need_no_key(api):
    assert api.get("/v1/datasets").status_code == 200


def test_datasets_health_and_metrics(api, registry):
    ds = api.get("/v1/datasets").json()["datasets"]
    assert {d["event_type"]: d["retention"] for d in ds} == {
        d.event_type: d.retention for d in registry.datasets.values()}
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json()["status"] == "ready"
    before = api.get("/metrics").text
    api.get("/v1/users/u1/events", params={"type": "repin"}, headers=READER)
    after = api.get("/metrics").text

    def grew(name, **labels):
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    # one request served, by its route template (not the user's path), with one timed KV read
    assert grew("usersignals_api_requests_total", route="/v1/users/{user_id}/events", status="200") == 1
    assert grew("usersignals_api_requests_total", route="/v1/users/u1/events") == 0
    assert grew("usersignals_api_kv_read_seconds_count") == 1


def test_readiness_reports_an_unreachable_kv(registry, kv_server):
    import redis.asyncio as aioredis

    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    with TestClient(create_app(kv_server.settings, registry, aclient=dead,
                               feature_logger=FeatureLogger(None, "x"))) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        r = client.get("/v1/users/u1/events", params={"type": "repin"}, headers={"X-Admin-Key": "admin-dev-key"})
        assert r.status_code == 503 and "KV layer unavailable" in r.json()["message"]


def test_tenant_configs_stored_before_the_hash_tag_are_still_served(registry, kv_server):
    """Configs a previous release stored under ``{p}:tenants`` (no hash tag) are adopted on the first
    sync; a newer version under ``{{p}:tenants}`` wins, and the next put stores under the new key."""
    import asyncio

    import orjson
    import redis.asyncio as aioredis

    from serving.tenants import TenantDirectory
    from usersignals.registry import tenant_to_dict

    async def scenario():
        client = aioredis.Redis.from_url(kv_server.settings.kv_url)
        prefix = "legacy-test"
        old = tenant_to_dict(registry.tenants["search_ranking"]) | {"sequences": {"searches": 3}}
        await client.hset(f"{prefix}:tenants", "search_ranking",
                          orjson.dumps({"version": 4, "updated_at": 1.0, "config": old}))
        directory = TenantDirectory(registry, client, prefix)
        assert await directory.sync() == 1
        assert directory.get("search_ranking").version == 4
        assert dict(directory.get("search_ranking").tenant.sequences) == {"searches": 3}
        cfg = await directory.put("search_ranking", {"sequences": {"searches": 5}})
        assert cfg.version == 5
        assert await client.hexists("{legacy-test:tenants}", "search_ranking")
        assert [h["version"] for h in await directory.history("search_ranking")] == [5]
        fresh = TenantDirectory(registry, client, prefix)  # another API process starting now
        await fresh.sync()
        assert fresh.get("search_ranking").version == 5
        await client.aclose()

    asyncio.run(scenario())
