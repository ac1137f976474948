"""Erasing a user from the KV layer, on a single redis-server and on a real 3-master Redis Cluster:
every dataset's keys (the registry's and an experiment's) and the aggregate state go, through the
batch's sync client and the API's asyncio client; another user's keys stay; and the erased user's
events are stored (and so aggregated) as new afterwards."""
import asyncio

import orjson
import pytest

from tests.integration.test_kv_store import redis_cluster  # noqa: F401  (the cluster fixture)
from usersignals import aggregates
from usersignals.kv import SequenceStore, StoredEvent

pytestmark = pytest.mark.integration

PREFIX = "t"


@pytest.fixture(params=["redis", "cluster"])
def client(request):
    if request.param == "redis":
        return request.getfixturevalue("kv_client")
    from redis.cluster import RedisCluster

    cluster = request.getfixturevalue("redis_cluster")
    cluster.flushall(target_nodes=RedisCluster.PRIMARIES)
    return cluster


def async_client(client):
    """A redis.asyncio client of the same server or cluster (what the API holds)."""
    if hasattr(client, "get_primaries"):
        from redis.asyncio.cluster import RedisCluster

        node = client.get_primaries()[0]
        return RedisCluster(host=node.host, port=node.port)
    import redis.asyncio as aioredis

    kwargs = client.connection_pool.connection_kwargs
    return aioredis.Redis(host=kwargs["host"], port=kwargs["port"])


def plant(client, store, registry, user):
    datasets = [*registry.datasets, "exp_dwell2"]
    for name in datasets:
        store.write([StoredEvent(name, user, f"{name}-{n}", 1000 + n,
                                 orjson.dumps({"event_id": f"{name}-{n}", "item_id": "i1", "ts": 1000 + n}))
                     for n in range(4)])
    client.hset(aggregates.agg_key(PREFIX, user), mapping={"c:c1": "1.000000:1000"})
    return datasets


def keys_of(client, store, user):
    return sorted(client.scan_iter(match=store.user_keys_pattern(user), count=1000))


@pytest.mark.parametrize("path", ["sync", "async"])
def test_every_key_of_the_user_goes_and_other_users_stay(client, registry, path):
    store = SequenceStore(client, registry, PREFIX)
    # "u*" is a glob: the erasure of user "u*" must not match user "u1"'s keys.
    gone, kept = "u*", "u1"
    datasets = plant(client, store, registry, gone)
    plant(client, store, registry, kept)
    before = keys_of(client, store, kept)
    assert len(before) == 2 * len(datasets) + 1

    if path == "sync":
        removed = store.delete_user(gone)
        removed["kv.aggregates"] = aggregates.delete_user(client, PREFIX, gone)
    else:
        async def erase():
            aclient = async_client(client)
            try:
                out = await SequenceStore(None, registry, PREFIX).delete_user_async(aclient, gone)
                out["kv.aggregates"] = await aggregates.delete_user_async(aclient, PREFIX, gone)
                return out
            finally:
                await aclient.aclose()

        removed = asyncio.run(erase())

    assert removed == {**{f"kv.{d}": 4 for d in datasets}, "kv.aggregates": 1}
    assert keys_of(client, store, gone) == []
    assert keys_of(client, store, kept) == before
    dirty = {m for b in range(16) for m in client.smembers(store.dirty_key(b))}
    assert not any(m.endswith(gone.encode()) for m in dirty) and any(m.endswith(b":u1") for m in dirty)
    # Indexing deduplicates on the stored ids: after the erasure, the same event is new again.
    assert store.write([StoredEvent("clicks", gone, "clicks-0", 5000, b'{"event_id": "clicks-0"}')]) == [True]
    assert store.delete_user("nobody") == {}  # nothing to delete is not an error
