"""The API's background loops on a real KV server: corrupt tenant records (not JSON, no version, a
config the registry refuses) written into the tenants hash are skipped, logged with their key and
field, and counted, while every other tenant keeps syncing and tenant PUTs keep working."""
import asyncio
import logging
import time

import orjson
import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter

from infra.stack import metric_sum
from serving.app import create_app
from serving.background import LoopErrors
from serving.feature_log import FeatureLogger
from serving.tenants import TenantDirectory
from usersignals.registry import tenant_to_dict

from .conftest import wait_until

pytestmark = pytest.mark.integration

ADMIN = {"X-Admin-Key": "admin-dev-key"}
CORRUPT = {
    "broken_json": b'{"version": 2, "config": {"sequ',
    "no_version": orjson.dumps({"updated_at": 1.0, "config": {"sequences": {"clicks": 5}}}),
    "bad_config": orjson.dumps({"version": 4, "updated_at": 1.0, "config": {"sequences": {"nope": 3}}}),
}
# What the log says of each: the hash's key and the field, and why.
REASONS = {
    "broken_json": "field 'broken_json': not JSON",
    "no_version": "field 'no_version': version must be an integer >= 1, got None",
    "bad_config": "skipped version 4 of the tenant record at key {%s:tenants} field 'bad_config': RegistryError: ",
}


def search_record(registry, version: int, length: int) -> bytes:
    """search_ranking as another API process stores it, with its searches cut to ``length``."""
    config = tenant_to_dict(registry.tenants["search_ranking"]) | {"sequences": {"searches": length}}
    return orjson.dumps({"version": version, "updated_at": time.time(), "config": config})


def corrupt_the_tenants_hash(kv_client, prefix: str) -> str:
    key = f"{{{prefix}:tenants}}"
    kv_client.hset(key, mapping=CORRUPT)
    return key


def test_one_sync_skips_each_corrupt_record_and_applies_the_rest(kv_server, kv_client, registry, caplog):
    prefix = kv_server.settings.kv_prefix
    key = corrupt_the_tenants_hash(kv_client, prefix)
    kv_client.hset(key, "search_ranking", search_record(registry, 2, 3))
    counter = Counter("errors_total", "test", ["loop"], registry=CollectorRegistry())

    async def scenario():
        client = aioredis.Redis.from_url(kv_server.settings.kv_url)
        directory = TenantDirectory(registry, client, prefix, LoopErrors(counter))
        try:
            with caplog.at_level(logging.ERROR, logger="serving.background"):
                assert await directory.sync() == 1
            assert directory.get("search_ranking").version == 2
            assert dict(directory.get("search_ranking").tenant.sequences) == {"searches": 3}
            assert all(directory.get(name) is None for name in CORRUPT)
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert counter.labels("tenant_sync")._value.get() == 3
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3, logged
    for name, reason in REASONS.items():
        assert any(f"key {key}" in m and reason.replace("%s", prefix) in m for m in logged), (name, logged)


def test_a_put_numbers_past_a_stored_version_this_registry_refuses(kv_server, kv_client, registry):
    """Another process stored search_ranking's version 7 with a dataset this registry lacks: this
    one skips it, and its own PUT must be version 8, not 2, or processes that applied 7 would
    ignore the PUT as older and serve another config than this one."""
    prefix = kv_server.settings.kv_prefix
    newer = tenant_to_dict(registry.tenants["search_ranking"]) | {"sequences": {"not_here_yet": 3}}
    kv_client.hset(f"{{{prefix}:tenants}}", "search_ranking",
                   orjson.dumps({"version": 7, "updated_at": time.time(), "config": newer}))

    async def scenario():
        client = aioredis.Redis.from_url(kv_server.settings.kv_url)
        directory = TenantDirectory(registry, client, prefix)
        try:
            await directory.sync()
            assert directory.get("search_ranking").version == 1     # the registry's, 7 was refused
            put = await directory.put("search_ranking", tenant_to_dict(registry.tenants["search_ranking"]))
            return put.version
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == 8
    assert orjson.loads(kv_client.hget(f"{{{prefix}:tenants}}", "search_ranking"))["version"] == 8


def test_the_api_keeps_syncing_and_taking_puts_with_corrupt_records_stored(kv_server, kv_client, registry, caplog):
    prefix = kv_server.settings.kv_prefix
    key = corrupt_the_tenants_hash(kv_client, prefix)
    kv_client.hset(key, "search_ranking", search_record(registry, 2, 3))
    app = create_app(kv_server.settings.with_overrides(admin_key="admin-dev-key"), registry,
                     feature_logger=FeatureLogger(None, "x"))
    directory = app.state.directory
    with caplog.at_level(logging.ERROR, logger="serving.background"), TestClient(app) as api:
        assert directory.get("search_ranking").version == 2  # the start-up sync applied it

        # Another process changes a tenant: the sync loop, which met the corrupt records every pass, applies it.
        kv_client.hset(key, "search_ranking", search_record(registry, 3, 4))
        wait_until(lambda: directory.get("search_ranking").version == 3, 10, 0.1, "version 3 of search_ranking")

        r = api.put("/v1/tenants/homefeed_ranking", json={"sequences": {"clicks": 7}}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2
        # A PUT of a corrupt record's tenant replaces the record.
        r = api.put("/v1/tenants/no_version", json={"sequences": {"clicks": 5}}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 1
        assert orjson.loads(kv_client.hget(key, "no_version"))["version"] == 1

        errors = metric_sum(api.get("/metrics").text, "usersignals_api_background_errors_total", loop="tenant_sync")
        assert errors >= 2 * len(CORRUPT)  # the start-up sync, and at least one pass of the loop
        assert metric_sum(api.get("/metrics").text, "usersignals_api_background_errors_total", loop="startup") == 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for reason in REASONS.values():
        assert f"key {key}" in logged and reason.replace("%s", prefix) in logged, logged
    assert logged.count("field 'broken_json'") == 1  # a record skipped every second is logged once a minute
