"""The API's pipelined KV client (serving.kv_client.AsyncKV) on a real redis-server: replies in
order under concurrency, errors that keep the connection in step, scripts reloaded after a
flush, reconnection after the server drops it, and redis-py's answers for the same calls."""
import asyncio
import hashlib
import uuid

import pytest
import redis.asyncio as aioredis

from serving.kv_client import AsyncKV, KVError, RedisPyKV
from usersignals.kv import READ_JSON_LUA

pytestmark = pytest.mark.integration


def run(coro):
    return asyncio.run(coro)


def test_concurrent_commands_get_their_own_replies(kv_server, kv_client):
    kv_client.mset({f"k{i}": f"v{i}" for i in range(500)})

    async def go():
        kv = AsyncKV.for_url(kv_server.settings.kv_url, connections=2)
        try:
            got = await asyncio.gather(*(kv.execute("GET", f"k{i}") for i in range(500)))
            many = await kv.mget([f"k{i}" for i in range(0, 500, 7)] + ["absent"])
            return got, many
        finally:
            kv.close()

    got, many = run(go())
    assert got == [f"v{i}".encode() for i in range(500)]
    assert many == [f"v{i}".encode() for i in range(0, 500, 7)] + [None]


def test_an_error_reply_raises_and_the_connection_stays_in_step(kv_server, kv_client):
    kv_client.set("s", "x")
    kv_client.hset("h", "f", "1")

    async def go():
        kv = AsyncKV.for_url(kv_server.settings.kv_url, connections=1)
        try:
            results = await asyncio.gather(kv.execute("HGET", "s", "f"), kv.hget("h", "f"), return_exceptions=True)
            return results
        finally:
            kv.close()

    wrong_type, ok = run(go())
    assert isinstance(wrong_type, KVError) and "WRONGTYPE" in str(wrong_type)
    assert ok == b"1"


def test_scripts_are_reloaded_after_a_flush_and_match_redis_py(kv_server, kv_client):
    kv_client.zadd("{u}:clicks:z", {"e1": 1, "e2": 2})
    kv_client.hset("{u}:clicks:h", mapping={"e1": '{"event_id":"e1"}', "e2": '{"event_id":"e2"}'})
    keys, args = ["{u}:clicks:z", "{u}:clicks:h"], [10]
    script = READ_JSON_LUA.encode()

    async def go():
        kv = AsyncKV.for_url(kv_server.settings.kv_url)
        ref = aioredis.Redis.from_url(kv_server.settings.kv_url)
        try:
            first = await kv.evalsha(script, keys, args)
            await ref.script_flush()
            again = await kv.evalsha(script, keys, args)  # NOSCRIPT -> SCRIPT LOAD -> EVALSHA
            via_redis_py = await RedisPyKV(ref).evalsha(script, keys, args)
            return first, again, via_redis_py
        finally:
            kv.close()
            await ref.aclose()

    first, again, via_redis_py = run(go())
    assert first == again == via_redis_py == [b'[{"event_id":"e2"},{"event_id":"e1"}]']


def test_a_dropped_connection_fails_what_waits_on_it_then_reconnects(kv_server, kv_client):
    kv_client.set("k", "v")

    async def go():
        kv = AsyncKV.for_url(kv_server.settings.kv_url, connections=1)
        try:
            assert await kv.execute("CLIENT", "SETNAME", "usersignals-test") == b"OK"
            blocked = asyncio.ensure_future(kv.execute("BLPOP", "never", 5))
            await asyncio.sleep(0.2)
            kv_client.client_kill_filter(_type="normal", skipme=True)  # the server drops our connection
            with pytest.raises(ConnectionError):
                await blocked
            return await kv.execute("GET", "k")
        finally:
            kv.close()

    assert run(go()) == b"v"


def test_no_server_means_a_prompt_connection_error(kv_server):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go():
        kv = AsyncKV("127.0.0.1", port)
        with pytest.raises(OSError):
            await kv.execute("PING")

    run(go())


def test_a_wrong_password_is_refused(kv_server, kv_client):
    async def go():
        kv = AsyncKV(kv_server.settings.host, kv_server.settings.kv_port, password="not-the-password")
        with pytest.raises(KVError):
            await kv.execute("PING")

    kv_client.config_set("requirepass", "right-password")
    try:
        run(go())
    finally:
        import redis

        redis.Redis(host=kv_server.settings.host, port=kv_server.settings.kv_port,
                    password="right-password").config_set("requirepass", "")


def test_warming_opens_every_connection_and_loads_the_scripts(kv_server, kv_client):
    """What the API does at start-up, so its first request does not pay a connect and a NOSCRIPT."""
    script = b"return 'warm-" + uuid.uuid4().hex.encode() + b"'"
    sha = hashlib.sha1(script).hexdigest()

    async def go():
        kv = AsyncKV.for_url(kv_server.settings.kv_url, connections=3)
        ref = aioredis.Redis.from_url(kv_server.settings.kv_url)
        try:
            await ref.script_flush()
            await kv.warm([script])
            opened = [c is not None and not c.closed for c in kv._conns]
            loaded = (await ref.script_exists(sha))[0]
            await ref.script_flush()
            await RedisPyKV(ref).warm([script])
            return opened, loaded, (await ref.script_exists(sha))[0]
        finally:
            kv.close()
            await ref.aclose()

    opened, loaded_async_kv, loaded_redis_py = run(go())
    assert opened == [True, True, True] and loaded_async_kv and loaded_redis_py
