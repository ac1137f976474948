"""POST /v1/features on a real KV server: stages, formats, tenants, isolation, hot changes."""
import asyncio
import tomllib

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.client import UserSignalsClient, UserSignalsError
from serving.feature_log import FeatureLogger
from serving.featurize import ARROW_CONTENT_TYPE
from usersignals.aggregates import AggregateStore
from usersignals.features import ItemFeatureStore
from usersignals.kv import SequenceStore, StoredEvent
from usersignals.registry import DEFAULT_REGISTRY_PATH, parse_registry

pytestmark = pytest.mark.integration

HOME = {"X-API-Key": "homefeed-dev-key"}
SEARCH = {"X-API-Key": "search-dev-key"}
ADMIN = {"X-Admin-Key": "admin-dev-key"}
NOW_MS = None


def stored(ds, user, n, ts, item, **extra):
    body = {"event_id": f"{ds}-{n}", "item_id": item, "ts": ts, "features": {"category": "c1"}, **extra}
    return StoredEvent(ds, user, f"{ds}-{n}", ts, orjson.dumps(body))


@pytest.fixture
def seeded(kv_server, kv_client, registry):
    import time

    now = int(time.time() * 1000)
    prefix = kv_server.settings.kv_prefix
    store = SequenceStore(kv_client, registry, prefix)
    events = []
    for n in range(120):  # clicks: items repeat every 40 events
        events.append(stored("clicks", "u1", n, now - 1000 * (120 - n), f"i{n % 40}", dwell_ms=5000))
    for n in range(30):   # closeups: dwell alternates under/over the 1000 ms threshold
        events.append(stored("closeups", "u1", n, now - 1000 * (30 - n), f"i{n}", dwell_ms=500 if n % 2 else 2000))
    for n in range(5):
        events.append(stored("searches", "u1", n, now - 1000 * (5 - n), f"i{n}", query=f"q{n}", surface="search"))
    store.write(events)
    ItemFeatureStore(kv_client, prefix).put_many(
        {f"i{n}": {"category": f"c{n % 3}", "popularity": 0.5, "embedding": [n / 100] * 16} for n in range(40)})
    AggregateStore(kv_client, registry, prefix).update([("u1", "c1", now - 1000, "repin"), ("u1", "c2", now - 1000, "view")])
    return now


@pytest.fixture
def app(kv_server):
    # The default tenants, with timeouts a busy CI machine cannot trip: these tests are about
    # behaviour; latency is the benchmark's job (test_a_tenant_over_its_timeout sets its own).
    raw = tomllib.loads(DEFAULT_REGISTRY_PATH.read_text())
    for tenant in raw["tenants"].values():
        tenant["timeout_ms"] = 10_000
    return create_app(kv_server.settings, parse_registry(raw), feature_logger=FeatureLogger(None, "x"))


@pytest.fixture
def api(app, seeded):
    with TestClient(app) as client:
        yield client


def post(api, body, headers=HOME, **kw):
    return api.post("/v1/features", json=body, headers=headers, **kw)


def test_json_sequences_are_filtered_enriched_sized_and_carry_views(api, registry):
    r = post(api, {"tenant": "homefeed_ranking", "user_ids": ["u1"], "format": "json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["config_version"] == 1 and body["tenant"] == "homefeed_ranking"
    (user,) = body["users"]
    clicks, closeups, repins = (user["sequences"][d] for d in ("clicks", "closeups", "repins"))
    assert len(clicks) == 40                                     # 120 clicks, only 40 distinct items (dedup)
    assert [e["event_id"] for e in clicks[:2]] == ["clicks-119", "clicks-118"]
    assert all(e["dwell_ms"] >= 1000 for e in closeups) and len(closeups) == 15
    assert repins == []
    assert clicks[0]["features"]["embedding"] == [0.39] * 16    # serving-time enrichment joined
    assert user["event_types"]["clicks"] == "click"
    assert set(user["views"]) == {"category_affinity", "activity"}
    assert list(user["views"]["category_affinity"])[0] == "c1"


def test_arrow_stream_matches_the_declared_layout(api, registry):
    import pyarrow as pa

    r = post(api, {"tenant": "homefeed_ranking", "user_ids": ["u1", "nobody"], "format": "arrow"},
             headers={**HOME, "Accept": ARROW_CONTENT_TYPE})
    assert r.status_code == 200 and r.headers["content-type"] == ARROW_CONTENT_TYPE
    table = pa.ipc.open_stream(r.content).read_all()  # a plain Arrow reader, nothing of ours
    assert table.num_rows == 2 and table.column("user_id").to_pylist() == ["u1", "nobody"]
    meta = table.schema.metadata
    assert meta[b"tenant"] == b'"homefeed_ranking"' and int(meta[b"config_version"]) >= 1
    assert table.schema.field("clicks.item_hash").type == pa.list_(pa.int64(), 50)
    assert table.schema.field("clicks.embedding").type == pa.list_(pa.list_(pa.float32(), 16), 50)
    assert table.schema.field("closeups.mask").type == pa.list_(pa.uint8(), 100)
    arrays = {name: np.array(table.column(name).to_pylist()) for name in table.column_names[1:]}
    assert arrays["clicks.mask"][0].sum() == 40 and arrays["clicks.mask"][1].sum() == 0
    assert arrays["closeups.mask"][0].sum() == 15
    assert (arrays["clicks.type_id"][0, :40] == registry.event_types["click"].id).all()
    assert np.all(np.diff(arrays["clicks.age_s"][0, :40]) > 0)  # newest first
    assert arrays["clicks.embedding"][0, 0, 0] == pytest.approx(0.39)
    # Without the Arrow Accept header, the same numbers as JSON lists.
    j = post(api, {"tenant": "homefeed_ranking", "user_ids": ["u1", "nobody"], "format": "arrow"}).json()
    assert np.array_equal(np.array(j["arrays"]["clicks.item_hash"]), arrays["clicks.item_hash"])


def test_the_retired_ufr_format_gets_a_400_that_names_arrow(api):
    r = post(api, {"tenant": "homefeed_ranking", "user_ids": ["u1"], "format": "ufr"})
    assert r.status_code == 400 and "arrow" in r.json()["message"]


def test_request_level_exclusions(api):
    r = post(api, {"tenant": "search_ranking", "user_ids": ["u1"], "exclude_items": ["i4", "i3"]}, SEARCH)
    searches = r.json()["users"][0]["sequences"]["searches"]
    assert [e["item_id"] for e in searches] == ["i2", "i1", "i0"]


@pytest.mark.parametrize("headers,status", [({}, 401), ({"X-API-Key": "nope"}, 403), (SEARCH, 403), (ADMIN, 200)])
def test_each_tenant_has_its_own_key(api, headers, status):
    assert post(api, {"tenant": "homefeed_ranking", "user_ids": ["u1"]}, headers).status_code == status


@pytest.mark.parametrize("body,status,fragment", [
    ({"tenant": "nope", "user_ids": ["u1"]}, 404, "unknown tenant"),
    ({"tenant": "homefeed_ranking", "user_ids": []}, 400, "user_ids"),
    ({"tenant": "homefeed_ranking", "user_ids": [f"u{i}" for i in range(101)]}, 400, "user_ids"),
    ({"tenant": "homefeed_ranking", "user_ids": ["u1"], "format": "xml"}, 400, "format"),
    ({"tenant": "homefeed_ranking", "user_ids": [""]}, 400, "user id must not be empty"),
    ({"user_ids": ["u1"]}, 400, "tenant"),
])
def test_bad_requests_get_4xx_with_a_message(api, body, status, fragment):
    r = post(api, body)
    assert r.status_code == status and fragment in r.json()["message"]


def test_a_body_that_is_not_declared_json_gets_a_clear_message(api):
    r = api.post("/v1/features", content=b'{"tenant": "x"}', headers={**HOME, "content-type": "text/plain"})
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["message"]


def test_oversized_bodies_are_refused(api):
    r = api.post("/v1/features", content=b"x" * 70_000, headers={**HOME, "content-type": "application/json"})
    assert r.status_code == 413


def test_admin_routes_need_the_admin_key(api):
    body = {"sequences": {"clicks": 5}}
    assert api.put("/v1/tenants/homefeed_ranking", json=body).status_code == 401
    assert api.put("/v1/tenants/homefeed_ranking", json=body, headers=HOME).status_code == 401
    assert api.put("/v1/tenants/homefeed_ranking", json=body, headers={"X-Admin-Key": "x"}).status_code == 403
    assert api.get("/v1/tenants/homefeed_ranking/versions", headers=HOME).status_code == 401


def test_a_tenant_key_lists_only_its_own_tenant(api):
    names = [t["name"] for t in api.get("/v1/tenants", headers=SEARCH).json()["tenants"]]
    assert names == ["search_ranking"]
    assert len(api.get("/v1/tenants", headers=ADMIN).json()["tenants"]) == 2
    assert "api_key_sha256" not in api.get("/v1/tenants", headers=ADMIN).json()["tenants"][0]["config"]


def test_tenant_changes_apply_at_once_versioned_and_validated(api):
    bad = api.put("/v1/tenants/search_ranking", json={"sequences": {"clicks": 500}}, headers=ADMIN)
    assert bad.status_code == 400 and "over the maximum of 100" in bad.json()["message"]
    ok = api.put("/v1/tenants/search_ranking", json={"sequences": {"searches": 2}, "format": "json"}, headers=ADMIN)
    assert ok.status_code == 200 and ok.json()["version"] == 2
    r = post(api, {"tenant": "search_ranking", "user_ids": ["u1"]}, SEARCH)  # the old key still works
    assert r.json()["config_version"] == 2
    assert list(r.json()["users"][0]["sequences"]) == ["searches"]
    assert len(r.json()["users"][0]["sequences"]["searches"]) == 2
    history = api.get("/v1/tenants/search_ranking/versions", headers=ADMIN).json()["versions"]
    assert [h["version"] for h in history] == [2]


def test_a_new_tenant_can_be_created_with_its_own_key(api):
    r = api.put("/v1/tenants/ads_retrieval", headers=ADMIN,
                json={"sequences": {"views": 10}, "api_key": "ads-secret", "views": ["top_category"]})
    assert r.status_code == 200
    got = post(api, {"tenant": "ads_retrieval", "user_ids": ["u1"]}, {"X-API-Key": "ads-secret"})
    assert got.status_code == 200 and got.json()["users"][0]["views"] == {"top_category": "c1"}
    assert post(api, {"tenant": "ads_retrieval", "user_ids": ["u1"]}, HOME).status_code == 403


def test_a_tenant_over_its_timeout_gets_504(api):
    api.put("/v1/tenants/search_ranking", json={"sequences": {"searches": 20}, "timeout_ms": 1}, headers=ADMIN)
    r = post(api, {"tenant": "search_ranking", "user_ids": [f"u{i}" for i in range(100)]}, SEARCH)
    assert r.status_code == 504 and "timeout" in r.json()["message"]


def test_a_tenant_over_its_request_rate_gets_429_with_retry_after(api):
    bad = api.put("/v1/tenants/search_ranking", json={"sequences": {"searches": 2}, "max_rps": -1}, headers=ADMIN)
    assert bad.status_code == 400 and "max_rps" in bad.json()["message"]
    api.put("/v1/tenants/search_ranking", json={"sequences": {"searches": 2}, "max_rps": 2}, headers=ADMIN)
    codes = [post(api, {"tenant": "search_ranking", "user_ids": ["u1"]}, SEARCH) for _ in range(6)]
    assert [r.status_code for r in codes[:2]] == [200, 200]  # the burst
    limited = [r for r in codes if r.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) >= 1
    assert "rate of 2 requests/s" in limited[0].json()["message"]
    assert post(api, {"tenant": "homefeed_ranking", "user_ids": ["u1"]}).status_code == 200  # others unaffected


def test_python_client(app, seeded):
    with TestClient(app) as tc:
        client = UserSignalsClient("http://testserver", "homefeed_ranking", "homefeed-dev-key", transport=tc._transport)
        users = client.features(["u1"])
        assert len(users[0]["sequences"]["clicks"]) == 40
        meta, arrays = client.features_arrays(["u1"])
        assert arrays["clicks.mask"].shape == (1, 50) and meta["tenant"] == "homefeed_ranking"
        assert client.features_arrow(["u1", "u2"]).num_rows == 2
        assert [e["event_id"] for e in client.user_events("u1", "click", limit=2)] == ["clicks-119", "clicks-118"]
        wrong = UserSignalsClient("http://testserver", "homefeed_ranking", "wrong", transport=tc._transport)
        for call in (lambda: wrong.features(["u1"]), lambda: wrong.user_events("u1", "click")):
            with pytest.raises(UserSignalsError) as info:
                call()
            assert info.value.status == 403


def run_async(app, coro_fn):
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await coro_fn(client)
    return asyncio.run(main())


def test_one_tenants_flood_does_not_starve_another(app, seeded):
    async def flood(client):
        r = await client.put("/v1/tenants/search_ranking", headers=ADMIN,
                             json={"sequences": {"searches": 20, "clicks": 20}, "max_concurrency": 1,
                                   "timeout_ms": 10_000})
        assert r.status_code == 200
        r = await client.put("/v1/tenants/homefeed_ranking", headers=ADMIN,
                             json={"sequences": {"clicks": 50}, "timeout_ms": 5_000})
        assert r.status_code == 200
        heavy = [client.post("/v1/features", headers=SEARCH,
                             json={"tenant": "search_ranking", "user_ids": [f"u{j}" for j in range(100)]})
                 for _ in range(20)]
        light = [client.post("/v1/features", headers=HOME, json={"tenant": "homefeed_ranking", "user_ids": ["u1"]})
                 for _ in range(10)]
        results = await asyncio.gather(*heavy, *light)
        return [(r.status_code, r.text[:100]) for r in results[:20]], [r.status_code for r in results[20:]]

    heavy, light = run_async(app, flood)
    codes = [c for c, _ in heavy]
    assert 429 in codes and 200 in codes, heavy
    assert light == [200] * 10


def test_config_changes_do_not_drop_requests_in_flight(app, seeded):
    async def churn(client):
        # Generous timeouts: this test is about config swaps, not latency under a loaded machine.
        await client.put("/v1/tenants/search_ranking", headers=ADMIN,
                         json={"sequences": {"searches": 1}, "timeout_ms": 10_000})

        async def reader():
            codes = []
            for _ in range(30):
                r = await client.post("/v1/features", headers=SEARCH, json={"tenant": "search_ranking", "user_ids": ["u1"]})
                codes.append((r.status_code, r.json().get("config_version")))
            return codes

        async def writer():
            for n in range(10):
                await client.put("/v1/tenants/search_ranking", headers=ADMIN,
                                 json={"sequences": {"searches": 1 + n}, "timeout_ms": 10_000})
                await asyncio.sleep(0)

        results = await asyncio.gather(reader(), reader(), writer())
        return results[0] + results[1]

    codes = run_async(app, churn)
    assert all(status == 200 for status, _ in codes), codes
    versions = [v for _, v in codes]
    assert max(versions) > 1
