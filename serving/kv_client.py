"""The API's hot-path client to a single-node KV server: pipelined RESP over a few connections.

redis.asyncio spends more CPU per command than the server does on it (a connection checked
out of a pool, packing through several layers, response callbacks, a retry wrapper): about
0.35 ms of the API's CPU per EVALSHA measured in ``make bench-serving``. Here a command is
one ``bytes`` join and one ``transport.write``; replies are parsed by hiredis in C and
handed, in order, to the futures waiting on that connection. Requests share a few
long-lived connections (round robin), so many requests in flight cost no extra sockets.

A connection that breaks fails the commands waiting on it with ``ConnectionError`` and is
reopened by the next command. A caller that gives up (its request timed out) leaves its
reply to be read and dropped, so the connection stays in step. On a Redis Cluster the hot path
keeps redis-py (commands must be routed by slot): ``connect(settings)`` picks.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from urllib.parse import unquote, urlparse

import hiredis


class KVError(RuntimeError):
    """An error reply from the KV server (the message is the server's)."""


def pack(args: tuple) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future] = deque()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = self.waiting.popleft()
            if not fut.done():
                if isinstance(reply, hiredis.ReplyError):
                    fut.set_exception(KVError(str(reply)))
                else:
                    fut.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.closed = True
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError(f"KV connection lost: {exc or 'closed by the server'}"))

    def send(self, payload: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        self.transport.write(payload)
        return fut


class AsyncKV:
    def __init__(self, host: str, port: int, db: int = 0, password: str | None = None,
                 username: str | None = None, connections: int = 2, connect_timeout_s: float = 2.0):
        self.host, self.port, self.db = host, port, db
        self.auth = (username, password) if password else None
        self.size = connections
        self.connect_timeout_s = connect_timeout_s
        self._conns: list[_Connection | None] = [None] * connections
        self._next = 0
        self._opening: list[asyncio.Future | None] = [None] * connections
        self._scripts: dict[bytes, bytes] = {}

    @classmethod
    def for_url(cls, url: str, **kwargs) -> "AsyncKV":
        u = urlparse(url)
        if u.scheme != "redis":
            raise ValueError(f"AsyncKV speaks plain redis:// to one server, not {u.scheme}://")
        db = int(u.path.lstrip("/") or 0)
        return cls(u.hostname or "127.0.0.1", u.port or 6379, db, unquote(u.password) if u.password else None,
                   unquote(u.username) if u.username else None, **kwargs)

    async def _open(self, slot: int) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(_Connection, self.host, self.port),
                                         self.connect_timeout_s)
        setup = []
        if self.auth:
            user, password = self.auth
            setup.append(conn.send(pack(("AUTH", user, password) if user else ("AUTH", password))))
        if self.db:
            setup.append(conn.send(pack(("SELECT", self.db))))
        try:
            for fut in setup:
                await asyncio.wait_for(fut, self.connect_timeout_s)
        except BaseException:
            conn.transport.close()  # a wrong password or a server that does not answer
            raise
        self._conns[slot] = conn
        return conn

    async def _reopen(self, slot: int) -> _Connection:
        opening = self._opening[slot]
        if opening is None:  # one connect per slot, however many commands wait for it
            opening = self._opening[slot] = asyncio.ensure_future(self._open(slot))
            opening.add_done_callback(lambda _f, s=slot: self._opening.__setitem__(s, None))
        return await asyncio.shield(opening)

    async def execute(self, *args):
        self._next = slot = (self._next + 1) % self.size
        conn = self._conns[slot]
        if conn is None or conn.closed:
            conn = await self._reopen(slot)
        return await conn.send(pack(args))

    async def evalsha(self, script: bytes, keys: list, args: list):
        """EVALSHA of ``script`` (loaded on first NOSCRIPT: after a restart or failover too)."""
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = hashlib.sha1(script).hexdigest().encode()
        try:
            return await self.execute(b"EVALSHA", sha, len(keys), *keys, *args)
        except KVError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            await self.execute(b"SCRIPT", b"LOAD", script)
            return await self.execute(b"EVALSHA", sha, len(keys), *keys, *args)

    async def mget(self, keys: list):
        return await self.execute(b"MGET", *keys) if keys else []

    async def hget(self, key, field):
        return await self.execute(b"HGET", key, field)

    async def warm(self, scripts: list[bytes]) -> None:
        """Open every connection and load ``scripts``, so the first requests pay neither."""
        for _ in range(self.size):
            for script in scripts:
                await self.execute(b"SCRIPT", b"LOAD", script)

    def close(self) -> None:
        for conn in self._conns:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        self._conns = [None] * self.size


class RedisPyKV:
    """The same calls over a redis.asyncio client: Redis Cluster (routed by slot) and tests."""

    def __init__(self, client):
        self.client = client
        self._scripts: dict[bytes, object] = {}

    async def evalsha(self, script: bytes, keys: list, args: list):
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self.client.register_script(script)
        return await registered(keys=keys, args=args)

    async def mget(self, keys: list):
        if not keys:
            return []
        mget = getattr(self.client, "mget_nonatomic", None) or self.client.mget  # cluster: split by slot
        return await mget(keys)

    async def hget(self, key, field):
        return await self.client.hget(key, field)

    async def warm(self, scripts: list[bytes]) -> None:
        """Learn the cluster's slots and load ``scripts`` on every primary (SCRIPT LOAD goes to
        all of them), so the first requests pay neither."""
        for script in scripts:
            await self.client.script_load(script)

    def close(self) -> None:
        pass


def as_kv(client):
    """``client`` itself when it is one of the above, else a redis.asyncio client wrapped."""
    return client if isinstance(client, (AsyncKV, RedisPyKV)) else RedisPyKV(client)


def connect(settings):
    """The API's KV clients: (redis.asyncio client, hot-path client). The first serves the tenant
    directory and /readyz; the second sequence reads (EVALSHA) and item features (MGET, HGET).
    A single node: a blocking pool, and AsyncKV's pipelined connections for the hot path. A Redis
    Cluster: one RedisCluster for both, routed by slot (a user's keys share a hash tag, so the
    read script runs on one node; item features are fetched per slot)."""
    from usersignals.kv import connect_async

    client = connect_async(settings)
    if settings.kv_cluster:
        return client, RedisPyKV(client)
    return client, AsyncKV.for_url(settings.kv_url)
