"""The whole pipeline on a real 3-master Redis Cluster, configured only through settings
(``kv_url`` = one node, ``kv_cluster`` = true), as the Kubernetes manifests run it:

Apache Kafka → the PyFlink job → the KV cluster → the API (``python -m serving``) answers
``POST /v1/features``; the trimmer (``python -m usersignals.trimmer``) trims on the cluster; a
Spark batch load (``batch.kv_load.load_into_kv``, the loader of bootstrap and re-enrichment)
writes to the cluster from its executors.
"""

import httpx
import orjson
import pytest

from infra.stack import Stack, metric_total, private_settings
from usersignals.kv import SequenceStore, StoredEvent, connect, decode_all

from .conftest import Producer, event, new_user, now_ms, wait_until
from .test_kv_store import redis_cluster  # noqa: F401  (the 3-master cluster fixture)

pytestmark = pytest.mark.integration

# usersignals/default_registry.toml's tenant, as it is: it serves clicks from these surfaces only.
TENANT, TENANT_KEY, SURFACE = "search_ranking", "search-dev-key", "homefeed"


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory, redis_cluster):  # noqa: F811
    """Broker, job, trimmer and one API worker, every one of them pointed at the cluster."""
    node = redis_cluster.get_primaries()[0]
    settings = private_settings(tmp_path_factory.mktemp("cluster-pipeline"), kv_url=f"redis://{node.host}:{node.port}/0",
                                kv_cluster=True, checkpoint_interval_ms=1000, bundle_time_ms=20, api_workers=1)
    stack = Stack(settings, components=("broker", "job", "trimmer", "api"))
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def store(cluster_stack, registry):
    client = connect(cluster_stack.settings)
    assert type(client).__name__ == "RedisCluster"
    return SequenceStore(client, registry, cluster_stack.settings.kv_prefix)


def masters_of(store, users, dataset="clicks") -> set[str]:
    """The primaries holding these users' sequences (a user's keys share one slot)."""
    client = store.client
    return {client.get_node_from_key(store.seq_key(dataset, u)).name for u in users}


def post_features(settings, tenant: str, key: str, user: str) -> httpx.Response:
    """POST /v1/features, asked again on a 504: the tenants' timeouts (50 and 100 ms) can go by on
    a loaded 2-core box, with the cluster, the job and the broker on it; not what is tested here."""
    for _ in range(5):
        r = httpx.post(f"http://{settings.host}:{settings.api_port}/v1/features", headers={"X-API-Key": key},
                       json={"tenant": tenant, "user_ids": [user]}, timeout=5)
        if r.status_code != 504:
            break
    assert r.status_code == 200, r.text
    return r


def features(settings, user: str) -> dict | None:
    return post_features(settings, TENANT, TENANT_KEY, user).json()["users"][0]


def test_events_go_through_the_job_into_the_cluster_and_out_of_the_api(cluster_stack, store, registry):
    s = cluster_stack.settings
    users = [new_user() for _ in range(12)]
    assert len(masters_of(store, users)) >= 2, "12 users all hashed to one master: the test proves nothing"
    t = now_ms() - 60_000
    producer = Producer(s)
    for u in users:
        for n in range(3):
            producer.send(event(u, n, t + n * 1000, "click", item=f"item-{n}", surface=SURFACE))
    producer.flush()
    for u in users:
        wait_until(lambda u=u: store.length("clicks", u) == 3, message=f"{u}'s clicks in the cluster")
        served = features(s, u)["sequences"]["clicks"]
        assert [e["event_id"] for e in served] == [f"{u}-{n}" for n in (2, 1, 0)]


def test_item_features_spread_over_the_masters_are_joined_into_model_ready_arrays(cluster_stack, store):
    """The home-feed tenant's embeddings come from item keys on every master (MGET split by slot)."""
    from usersignals.features import ItemFeatureStore
    from usersignals.registry import load_registry

    s = cluster_stack.settings
    user, items = new_user(), [f"emb-item-{n}" for n in range(8)]
    vectors = {i: [float(n)] * load_registry().model.embedding_dim for n, i in enumerate(items, start=1)}
    features_store = ItemFeatureStore(connect(s), s.kv_prefix)
    assert len({store.client.get_node_from_key(features_store.key(i)).name for i in items}) >= 2
    features_store.put_many({i: {"category": "c1", "embedding": v} for i, v in vectors.items()})
    t = now_ms() - 30_000
    producer = Producer(s)
    for n, item in enumerate(items):
        producer.send(event(user, n, t + n * 1000, "click", item=item))
    producer.flush()
    wait_until(lambda: store.length("clicks", user) == len(items), message=f"{user}'s clicks in the cluster")
    r = post_features(s, "homefeed_ranking", "homefeed-dev-key", user)
    served = r.json()["arrays"]["clicks.embedding"][0][:len(items)]   # newest first
    assert served == [vectors[i] for i in reversed(items)]


def test_the_trimmer_trims_the_cluster(cluster_stack, store, registry):
    s = cluster_stack.settings
    keep = registry.datasets["clicks"].retention
    removed_before = metric_total(s.trimmer_metrics_port, "usersignals_trimmer_events_removed_total") or 0
    user = new_user()
    t = now_ms() - 100_000
    producer = Producer(s)
    for i in range(3 * keep):
        producer.send(event(user, i, t + i * 10, "click"))
    producer.flush()
    newest = [f"{user}-{i}" for i in range(3 * keep - 1, 2 * keep - 1, -1)]

    def trimmed():
        rows = store.read(user, {"clicks": keep})["clicks"]
        return store.length("clicks", user) == keep and [r["event_id"] for r in decode_all(rows)] == newest

    wait_until(trimmed, timeout=60, message=f"{user}'s clicks trimmed to {keep} by the trimmer")
    removed = metric_total(s.trimmer_metrics_port, "usersignals_trimmer_events_removed_total") - removed_before
    assert removed >= 2 * keep


def test_a_spark_batch_load_writes_to_the_cluster(cluster_stack, store):
    from batch.kv_load import load_into_kv
    from batch.session import spark_session

    s = cluster_stack.settings
    users = [new_user() for _ in range(6)]
    ts = now_ms() - 3_600_000
    rows = [("clicks", u, f"{u}-batch-{n}", ts + n,
             orjson.dumps({"event_id": f"{u}-batch-{n}", "user_id": u, "event_type": "click", "item_id": f"b{n}",
                           "ts": ts + n, "surface": SURFACE, "features": {}}).decode())
            for u in users for n in range(2)]
    spark = spark_session(s.with_overrides(spark_master="local[1]"), "test-cluster-load")
    try:
        df = spark.createDataFrame(rows, "dataset string, user_id string, event_id string, ts long, payload string")
        assert load_into_kv(df.repartition(2), s) == len(rows)
    finally:
        spark.stop()
    assert len(masters_of(store, users)) >= 2
    for u in users:
        assert [e["event_id"] for e in decode_all(store.read(u, {"clicks": 10})["clicks"])] == [f"{u}-batch-1",
                                                                                              f"{u}-batch-0"]
    assert [e["event_id"] for e in features(s, users[0])["sequences"]["clicks"]] == [f"{users[0]}-batch-1",
                                                                                   f"{users[0]}-batch-0"]


def test_a_tenant_change_is_one_transaction_on_the_cluster(cluster_stack, store):
    """PUT /v1/tenants writes the config and its history in one MULTI: both keys share a hash tag.
    (Last in this module: it changes the tenant the other tests serve.)"""
    s = cluster_stack.settings
    base, admin = f"http://{s.host}:{s.api_port}", {"X-Admin-Key": s.admin_key}
    r = httpx.put(f"{base}/v1/tenants/{TENANT}", headers=admin, timeout=5,
                  json={"sequences": {"clicks": 1}, "filters": {"surfaces": [SURFACE]}})
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    user, t = new_user(), now_ms() - 60_000
    producer = Producer(s)
    for n in range(3):
        producer.send(event(user, n, t + n * 1000, "click", item=f"item-{n}", surface=SURFACE))
    producer.flush()
    wait_until(lambda: store.length("clicks", user) == 3, message=f"{user}'s clicks in the cluster")
    assert [e["event_id"] for e in features(s, user)["sequences"]["clicks"]] == [f"{user}-2"]
    history = httpx.get(f"{base}/v1/tenants/{TENANT}/versions", headers=admin, timeout=5).json()["versions"]
    assert [h["version"] for h in history] == [version]


def test_a_datasets_keys_are_expired_and_deleted_on_every_master(cluster_stack, store):
    """What an experiment's load (its TTL) and its clean-up do, on keys spread over the masters."""
    other = SequenceStore(store.client, store.registry, "exptest")  # a prefix of its own
    users = [f"exp-{i}" for i in range(30)]
    other.write([StoredEvent("repins", u, f"{u}-e", 1_800_000_000_000,
                             b'{"event_id":"%s-e","item_id":"a","ts":1800000000000}' % u.encode()) for u in users])
    assert len(masters_of(other, users, "repins")) == 3
    assert other.expire_dataset("repins", 3600) == 2 * len(users)  # a sorted set and a hash per user
    assert all(3000 < store.client.ttl(k) <= 3600 for u in users
               for k in (other.seq_key("repins", u), other.events_key("repins", u)))
    assert other.delete_dataset("repins") == 2 * len(users)
    assert not any(store.client.exists(other.seq_key("repins", u)) for u in users)
    assert store.length("repins", users[0]) == 0
