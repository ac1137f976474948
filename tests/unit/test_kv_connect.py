"""Which KV clients settings give each part: one node or a Redis Cluster, decided by kv_cluster alone."""
import asyncio

from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from serving import kv_client
from usersignals.kv import connect_async
from usersignals.settings import load_settings


def test_the_api_on_one_node_gets_a_blocking_pool_and_the_pipelined_hot_path():
    s = load_settings({"USERSIGNALS_KV_URL": "redis://kv.example:6390/2"})
    client, hot = kv_client.connect(s)
    assert isinstance(client, AsyncRedis) and isinstance(hot, kv_client.AsyncKV)
    assert (hot.host, hot.port, hot.db) == ("kv.example", 6390, 2)
    pool = client.connection_pool
    assert (pool.max_connections, pool.connection_kwargs["host"], pool.connection_kwargs["db"]) == (64, "kv.example", 2)


def test_the_api_on_a_cluster_routes_everything_through_one_redis_cluster():
    s = load_settings({"USERSIGNALS_KV_URL": "redis://node-0.kv:6379/0", "USERSIGNALS_KV_CLUSTER": "true"})
    client, hot = kv_client.connect(s)
    assert isinstance(client, AsyncRedisCluster)
    assert isinstance(hot, kv_client.RedisPyKV) and hot.client is client   # EVALSHA, MGET, HGET routed by slot
    assert [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()] == [("node-0.kv", 6379)]
    asyncio.run(client.aclose())


def test_connect_async_follows_the_setting_not_the_url():
    one = load_settings({"USERSIGNALS_KV_URL": "redis://kv:6379/0", "USERSIGNALS_KV_CLUSTER": "false"})
    assert isinstance(connect_async(one), AsyncRedis)
