"""POST /v1/admin/reload on a real API and KV server: the registry file's datasets, enrichments,
views and embedding size apply without a restart, as tenants do; a request in flight finishes
with the registry it started with; a file that is invalid, or that would break a tenant being
served, is refused and changes nothing."""
import asyncio
import dataclasses
import hashlib
import time
import tomllib

import re

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.feature_log import FeatureLogger
from serving.featurize import ARROW_CONTENT_TYPE
from usersignals.features import ItemFeatureStore
from usersignals.kv import SequenceStore, StoredEvent
from usersignals.registry import DEFAULT_REGISTRY_PATH, parse_registry

pytestmark = pytest.mark.integration

ADMIN = {"X-Admin-Key": "admin-dev-key"}
HOME = {"X-API-Key": "homefeed-dev-key"}


def default_text() -> str:
    """The default registry file, with timeouts a busy machine cannot trip (behaviour, not latency)."""
    return re.sub(r"^timeout_ms = \d+$", "timeout_ms = 10000", DEFAULT_REGISTRY_PATH.read_text(), flags=re.M)


# A new event type (no weights: the documented defaults), its dataset and a tenant reading it.
SHARES = f"""
[event_types.share]
id = 6
description = "User shared an item."

[datasets.shares]
event_type = "share"
retention = 30
enrichments = ["item_category"]

[tenants.share_ranking]
sequences = {{ shares = 10, clicks = 5 }}
views = ["top_category"]
timeout_ms = 10000
api_key_sha256 = "{hashlib.sha256(b"share-dev-key").hexdigest()}"
"""


def without(text: str, *sections: str) -> str:
    """The registry text without these [sections] (each up to the next section)."""
    for section in sections:
        text = re.sub(rf"^\[{re.escape(section)}\]\n(?:(?!\[).*\n)*", "", text, flags=re.M)
    return text


@pytest.fixture
def registry_file(tmp_path):
    path = tmp_path / "registry.toml"
    path.write_text(default_text())
    return path


@pytest.fixture
def app(kv_server, registry_file, kv_client):
    settings = dataclasses.replace(kv_server.settings, registry_path=registry_file)
    return create_app(settings, feature_logger=FeatureLogger(None, "x"))


def seed_shares(kv_client, prefix: str, user: str, n: int) -> None:
    """Sequences already in the KV layer before the API knows their dataset (as a bootstrap leaves them)."""
    now = int(time.time() * 1000)
    store = SequenceStore(kv_client, parse_registry(tomllib.loads(default_text() + SHARES)), prefix)
    store.write([StoredEvent("shares", user, f"s{k}", now - 1000 * (n - k), orjson.dumps(
        {"event_id": f"s{k}", "item_id": f"i{k}", "ts": now - 1000 * (n - k), "features": {"category": "c1"}}))
        for k in range(n)])


def test_a_new_type_dataset_and_tenant_are_served_after_a_reload_without_a_restart(app, registry_file, kv_client):
    seed_shares(kv_client, app.state.settings.kv_prefix, "u1", 4)
    with TestClient(app) as api:
        assert api.get("/v1/users/u1/events", params={"type": "share"}, headers=ADMIN).status_code == 404
        assert "shares" not in {d["name"] for d in api.get("/v1/datasets").json()["datasets"]}
        refused = api.put("/v1/tenants/share_ranking", json={"sequences": {"shares": 10}}, headers=ADMIN)
        assert refused.status_code == 400 and "'shares' is not a registered dataset" in refused.json()["message"]

        registry_file.write_text(default_text() + SHARES)
        r = api.post("/v1/admin/reload", headers=ADMIN)
        assert r.status_code == 200 and r.json() == {"changed": ["share_ranking"]}

        events = api.get("/v1/users/u1/events", params={"type": "share", "limit": 30}, headers=ADMIN)
        assert events.status_code == 200, events.text
        assert [e["event_id"] for e in events.json()["events"]] == ["s3", "s2", "s1", "s0"]
        assert {"name": "shares", "event_type": "share", "retention": 30, "enrichments": ["item_category"],
                "ttl_days": 90} in api.get("/v1/datasets").json()["datasets"]
        served = api.post("/v1/features", json={"tenant": "share_ranking", "user_ids": ["u1"], "format": "json"},
                          headers={"X-API-Key": "share-dev-key"})
        assert served.status_code == 200, served.text
        (user,) = served.json()["users"]
        assert [e["event_id"] for e in user["sequences"]["shares"]] == ["s3", "s2", "s1", "s0"]
        assert "top_category" in user["views"]
        spec = api.get("/openapi.json").json()  # documented from the registry served now
        assert "share" in orjson.dumps(spec).decode()
        assert app.state.registry.event_types["share"].aggregate_weight == 1.0  # the default, not 0


def test_an_invalid_registry_file_is_refused_naming_the_bad_value_and_changes_nothing(app, registry_file):
    with TestClient(app) as api:
        before = app.state.pipeline
        registry_file.write_text(default_text() + SHARES.replace('id = 6', 'id = 6\ntraining_weight = -2'))
        r = api.post("/v1/admin/reload", headers=ADMIN)
        assert r.status_code == 400
        assert "event_types.share.training_weight: must be a number from 0 to 1000, got -2" in r.json()["message"]
        assert app.state.pipeline is before and "shares" not in app.state.registry.datasets


def test_a_registry_that_drops_a_dataset_a_served_tenant_reads_is_refused(app, registry_file):
    with TestClient(app) as api:
        put = api.put("/v1/tenants/views_only", json={"sequences": {"views": 20}}, headers=ADMIN)
        assert put.status_code == 200, put.text
        registry_file.write_text(without(default_text(), "datasets.views", "event_types.view"))
        r = api.post("/v1/admin/reload", headers=ADMIN)
        assert r.status_code == 400
        assert "tenant 'views_only' (version 1) does not fit the new registry" in r.json()["message"]
        assert "'views' is not a registered dataset" in r.json()["message"]
        assert "views" in app.state.registry.datasets  # still served


def test_a_request_in_flight_finishes_with_the_registry_it_started_with(app, registry_file, kv_client):
    """The KV layer is paused while a request waits on it; the reload lands meanwhile (a smaller
    embedding size): the waiting request still answers with 16-d embeddings, the next with 8."""
    import pyarrow as pa

    prefix = app.state.settings.kv_prefix
    now = int(time.time() * 1000)
    SequenceStore(kv_client, parse_registry(tomllib.loads(default_text())), prefix).write([StoredEvent(
        "clicks", "u1", f"c{k}", now - 1000 * (3 - k),
        orjson.dumps({"event_id": f"c{k}", "item_id": f"i{k}", "ts": now - 1000 * (3 - k), "features": {}}))
        for k in range(3)])
    ItemFeatureStore(kv_client, prefix).put_many({f"i{k}": {"category": "c1", "embedding": [0.5] * 16}
                                                  for k in range(3)})
    body = {"tenant": "homefeed_ranking", "user_ids": ["u1"], "format": "arrow"}
    arrow = {**HOME, "Accept": ARROW_CONTENT_TYPE}

    def embedding_type(response):
        assert response.status_code == 200, response.text
        return pa.ipc.open_stream(response.content).read_all().schema.field("clicks.embedding").type

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as client:
            await client.post("/v1/features", json=body, headers=arrow)  # connections open, features cached
            kv_client.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            in_flight = asyncio.create_task(client.post("/v1/features", json=body, headers=arrow))
            await asyncio.sleep(0.3)
            assert not in_flight.done()  # waiting on the paused KV layer, its pipeline taken
            registry_file.write_text(default_text().replace("embedding_dim = 16", "embedding_dim = 8"))
            reload = asyncio.create_task(client.post("/v1/admin/reload", headers=ADMIN))
            await asyncio.sleep(0.3)
            assert app.state.registry.model.embedding_dim == 8 and not in_flight.done()  # swapped meanwhile
            return await in_flight, await reload, await client.post("/v1/features", json=body, headers=arrow)

    started, reloaded, after = asyncio.run(scenario())
    assert reloaded.status_code == 200, reloaded.text
    assert embedding_type(started) == pa.list_(pa.list_(pa.float32(), 16), 50)
    assert embedding_type(after) == pa.list_(pa.list_(pa.float32(), 8), 50)
