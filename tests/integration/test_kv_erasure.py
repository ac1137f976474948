"""Erasing a user from the KV layer, on a single redis-server and on a real 3-master Redis Cluster:
every dataset's keys (the registry's and an experiment's) and the aggregate state go, through the
batch's sync client and the API's asyncio client; another user's keys stay; and the erased user's
events are stored (and so aggregated) as new afterwards. A property test does it for any users the
identifier rule allows (usersignals/ids.py), many of them each other's prefixes."""
import asyncio

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_kv_store import redis_cluster  # noqa: F401  (the cluster fixture)
from usersignals import aggregates, ids
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


# --- property: any users the identifier rule allows; erasing one touches no other ------------------

# Characters the rule allows that look like separators, and unicode look-alikes of the ones it refuses.
LOOKALIKES = "-._+@#%&=,;!$~|^()<>" + "：｛｝［］＊？＼／\u2217\u2044é中🙂"
ID_CHARS = st.characters(codec="utf-8").filter(lambda c: ids.is_id(c))


def user_ids():
    """Ids the rule allows: short, one character, the maximum length, made of look-alikes."""
    mixed = st.text(st.one_of(st.sampled_from(LOOKALIKES), ID_CHARS), min_size=1, max_size=12)
    longest = st.text(st.sampled_from(LOOKALIKES + "ab"), min_size=ids.MAX_ID_CHARS, max_size=ids.MAX_ID_CHARS)
    return st.one_of(mixed, st.text(ID_CHARS, min_size=1, max_size=1), longest).filter(ids.is_id)


@st.composite
def populations(draw):
    """The user to erase and others: some of them its id extended or cut (prefix matches), and
    legacy users, stored before the rule, whose ids make keys that start like its keys
    (``us:{<gone>}:views}:clicks:z`` is user ``<gone>}:views``'s)."""
    gone = draw(user_ids())
    related = [gone + draw(user_ids()), draw(user_ids()) + gone, gone[:-1], gone[:1]]
    others = [u for u in {*related, *draw(st.lists(user_ids(), min_size=1, max_size=3))}
              if ids.is_id(u) and u != gone]
    legacy = [f"{gone}}}:views", f"{gone}}}:clicks:z", f"{gone}}}:{draw(user_ids())}", f"{gone}}}", f"{gone}:"]
    return gone, sorted({*others, *legacy})


def all_keys(client):
    return {k for k in client.scan_iter(count=1000)}


_examples = iter(range(1_000_000))


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(population=populations(), path=st.sampled_from(["sync", "async"]))
def test_erasing_a_valid_user_leaves_every_other_users_keys_and_events(client, registry, population, path):
    gone, others = population
    prefix = f"p{next(_examples)}"  # one keyspace per example: nothing to flush between them
    store = SequenceStore(client, registry, prefix)
    users = [gone, *others]
    for n, user in enumerate(users):
        store.write([StoredEvent(ds, user, f"{ds}-{n}-{k}", 1000 + k,
                                 orjson.dumps({"event_id": f"{ds}-{n}-{k}", "item_id": "i1", "ts": 1000 + k}))
                     for ds in ("clicks", "views", "exp_dwell2") for k in range(2)])
        client.hset(aggregates.agg_key(prefix, user), mapping={"c:c1": f"{n}.000000:1000"})
    limits = {"clicks": 5, "views": 5}
    served = {u: store.read(u, limits) for u in others}
    before = {k for k in all_keys(client) if k.startswith(prefix.encode() + b":")}

    if path == "sync":
        removed = store.delete_user(gone)
    else:
        async def erase():
            aclient = async_client(client)
            try:
                return await SequenceStore(None, registry, prefix).delete_user_async(aclient, gone)
            finally:
                await aclient.aclose()

        removed = asyncio.run(erase())
    aggregates.delete_user(client, prefix, gone)

    assert removed == {"kv.clicks": 2, "kv.views": 2, "kv.exp_dwell2": 2}
    after = {k for k in all_keys(client) if k.startswith(prefix.encode() + b":")}
    gone_keys = {k.encode() for ds in ("clicks", "views", "exp_dwell2")
                 for k in (store.seq_key(ds, gone), store.events_key(ds, gone))} | {
        aggregates.agg_key(prefix, gone).encode()}
    dirty_keys = {store.dirty_key(b).encode() for b in range(16)}
    assert gone_keys <= before
    assert after - dirty_keys == before - dirty_keys - gone_keys
    assert store.read(gone, limits) == {"clicks": [], "views": []}
    for user in others:
        assert store.read(user, limits) == served[user], user
        assert store.length("exp_dwell2", user) == 2
    dirty = {m.decode() for b in range(16) for m in client.smembers(store.dirty_key(b))}
    assert not {f"{ds}:{gone}" for ds in ("clicks", "views", "exp_dwell2")} & dirty
    assert {f"{ds}:{u}" for ds in ("clicks", "views", "exp_dwell2") for u in others} <= dirty
