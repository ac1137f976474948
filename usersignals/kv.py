"""The KV layer: each user's last N enriched events per dataset, newest first.

Data model (Redis protocol; runs on a single Redis and on Redis Cluster, both tested)::

    {p}:{<user_id>}:<dataset>:z   ZSET  member = event_id, score = event time (ms)
    {p}:{<user_id>}:<dataset>:h   HASH  field  = event_id, value = stored event (JSON)
    {p}:dirty:{<bucket>}          SET   "<dataset>:<user_id>" written since the last trim

Why this shape:

* Insert is O(log N) with no read: ``HSET`` + ``ZADD`` (+ one ``SADD`` per user and
  dataset per batch), pipelined, never reading the existing sequence.
* Out-of-order inserts land in event-time order because the ZSET orders by score.
* A replayed event has the same event_id, so it overwrites itself: stored once.
  The daily repair job relies on the same property to fix enrichment in place.
* The ``{user_id}`` hash tag puts all of a user's keys in one cluster slot, so a read
  of several datasets is one Lua call, one round trip, on one node.
* Sequences may grow past N between trims; reads never return more than N. A
  background trimmer drains the dirty sets and cuts each key in one range delete
  (``ZREMRANGEBYRANK``), not member by member.

Cost per event: 2 commands on the hot path (+1 per user and dataset per batch), about
``len(payload) + 2 * len(event_id) + ~90`` bytes of memory while retained.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

from usersignals.ids import is_name
from usersignals.registry import Registry
from usersignals.resp import execute_packed, is_single_node, pack, raise_first_error, run_script_batch

if TYPE_CHECKING:
    from usersignals.settings import Settings

DIRTY_BUCKETS = 16

# KEYS: (zset, hash) per dataset [, aggregate hash]; ARGV: limit per dataset.
# %(found)s turns the HMGET reply `vals` into out[i]; %(empty)s is out[i] for an empty sequence.
_READ_TEMPLATE = """
local out = {}
for i = 1, #ARGV do
  local ids = redis.call('ZREVRANGE', KEYS[2 * i - 1], 0, tonumber(ARGV[i]) - 1)
  if #ids > 0 then
    local vals = redis.call('HMGET', KEYS[2 * i], unpack(ids))
    %(found)s
  else
    out[i] = %(empty)s
  end
end
if #KEYS > 2 * #ARGV then
  out[#ARGV + 1] = redis.call('HGETALL', KEYS[#KEYS])
end
return out
"""

# Each dataset as a list of stored events (payload bytes; nil where a payload is missing).
_READ_LUA = _READ_TEMPLATE % {"found": "out[i] = vals", "empty": "{}"}

# The serving read: each dataset as one JSON array joined server-side, so a client parses
# one string per dataset, not N.
READ_JSON_LUA = _READ_TEMPLATE % {"found": """local parts = {}
    for j = 1, #vals do
      if vals[j] then parts[#parts + 1] = vals[j] end
    end
    out[i] = '[' .. table.concat(parts, ',') .. ']'""", "empty": "'[]'"}

_TRIM_LUA = """
local keep = tonumber(ARGV[1])
local card = redis.call('ZCARD', KEYS[1])
local removed = 0
if card > keep then
  local ids = redis.call('ZRANGE', KEYS[1], 0, card - keep - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, card - keep - 1)
  for i = 1, #ids, 1000 do
    redis.call('HDEL', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
  end
  removed = #ids
end
local ttl = tonumber(ARGV[2])
if ttl > 0 and card > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return removed
"""


# KEYS: a user's dataset keys (one slot: they share the user's hash tag). Returns each key's
# size (ZCARD of a sequence, HLEN of a payload hash) and deletes them all, atomically.
_DELETE_USER_LUA = """
local out = {}
for i = 1, #KEYS do
  if string.sub(KEYS[i], -2) == ':z' then out[i] = redis.call('ZCARD', KEYS[i])
  else out[i] = redis.call('HLEN', KEYS[i]) end
end
if #KEYS > 0 then redis.call('DEL', unpack(KEYS)) end
return out
"""

_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One enriched event ready for the KV layer."""

    dataset: str
    user_id: str
    event_id: str
    ts: int
    payload: bytes


@dataclass
class TrimStats:
    keys_checked: int = 0
    events_removed: int = 0


class SequenceStore:
    """Insert, read and trim user sequences. ``client`` is a redis-py Redis or RedisCluster
    (None for a store used only for its key layout and read arguments)."""

    def __init__(self, client, registry: Registry, prefix: str = "us"):
        self.client = client
        self.registry = registry
        self.prefix = prefix
        # Clusters route each command by slot through redis-py; a single node gets the packed path.
        self._single_node = is_single_node(client)
        if client is not None:
            self._read = client.register_script(_READ_LUA)
            self._trim = client.register_script(_TRIM_LUA)

    # --- keys ---------------------------------------------------------------------
    def seq_key(self, dataset: str, user_id: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:{dataset}:z"

    def events_key(self, dataset: str, user_id: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:{dataset}:h"

    def dirty_key(self, bucket: int) -> str:
        return f"{self.prefix}:dirty:{{{bucket}}}"

    @staticmethod
    def bucket_of(user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % DIRTY_BUCKETS

    # --- write ----------------------------------------------------------------------
    def write(self, events: Iterable[StoredEvent]) -> list[bool]:
        """Insert events in one pipelined round trip.

        Returns, per event, whether it was new (False: a replay of a stored event).
        """
        if self._single_node:
            return self._write_packed(events)
        return self._write_pipeline(events)

    def _write_packed(self, events: Iterable[StoredEvent]) -> list[bool]:
        # The hot path of the indexer: the same commands as _write_pipeline, encoded to RESP
        # in one pass (redis-py's per-command packing costs more than the server's work).
        parts: list[bytes] = []
        dirty: dict[int, set[str]] = {}
        n = 0
        p = self.prefix
        for e in events:
            user = e.user_id
            base = f"{p}:{{{user}}}:{e.dataset}:".encode()
            eid = e.event_id.encode()
            parts.append(b"*4\r\n$4\r\nHSET\r\n$%d\r\n%sh\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                len(base) + 1, base, len(eid), eid, len(e.payload), e.payload))
            score = b"%d" % e.ts
            parts.append(b"*4\r\n$4\r\nZADD\r\n$%d\r\n%sz\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                len(base) + 1, base, len(score), score, len(eid), eid))
            dirty.setdefault(self.bucket_of(user), set()).add(f"{e.dataset}:{user}")
            n += 1
        if not n:
            return []
        for bucket, members in dirty.items():
            parts.append(pack(b"SADD", self.dirty_key(bucket).encode(), *(m.encode() for m in members)))
        replies = execute_packed(self.client, b"".join(parts), 2 * n + len(dirty))
        raise_first_error(replies)
        return [r == 1 for r in replies[1:2 * n:2]]  # ZADD: 1 when the event_id was not there yet

    def _write_pipeline(self, events: Iterable[StoredEvent]) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        dirty: dict[int, set[str]] = {}
        n = 0
        for e in events:
            # HSET before ZADD: a crash in between leaves an orphan payload, never a dangling id.
            pipe.hset(self.events_key(e.dataset, e.user_id), e.event_id, e.payload)
            pipe.zadd(self.seq_key(e.dataset, e.user_id), {e.event_id: e.ts})
            dirty.setdefault(self.bucket_of(e.user_id), set()).add(f"{e.dataset}:{e.user_id}")
            n += 1
        if not n:
            return []
        for bucket, members in dirty.items():
            pipe.sadd(self.dirty_key(bucket), *members)
        replies = pipe.execute()
        return [r == 1 for r in replies[1:2 * n:2]]

    # --- delete a user (erasure) ------------------------------------------------------
    def user_keys_pattern(self, user_id: str) -> str:
        """SCAN MATCH pattern of every key of the user (its hash tag escaped for the glob)."""
        return f"{self.prefix}:{{{user_id.translate(_GLOB_SPECIAL)}}}:*"

    def user_slot_key(self, user_id: str) -> str:
        """A key in the user's slot (the hash tag decides it): where a cluster holds all its keys."""
        return self.seq_key("_", user_id)

    def key_owner(self, key: bytes | str) -> tuple[str, str] | None:
        """``(user_id, dataset)`` of a sequence or payload key, None for any other key.

        The parse is exact and unique whatever the user id holds: a dataset is a name (no ``:``,
        no ``}``), so it is the last part before ``:z``/``:h``, and the user id is what the
        braces before it hold. Erasure keeps a found key only when this gives back its user:
        never a prefix match (``us:{a}:views}:clicks:z`` is user ``a}:views``'s, not ``a``'s)."""
        try:
            k = key.decode() if isinstance(key, bytes) else key
        except UnicodeDecodeError:  # not UTF-8: no user id of ours makes it
            return None
        head = f"{self.prefix}:{{"
        if not (k.startswith(head) and k.endswith((":z", ":h"))):
            return None
        tagged, _, dataset = k[len(head):-2].rpartition(":")
        if not tagged.endswith("}") or not is_name(dataset):
            return None
        return tagged[:-1], dataset

    def dataset_keys_of(self, user_id: str, found: Iterable[bytes | str] = ()) -> list[str]:
        """Every sequence and payload key of the user: the registry's datasets' and any other
        found (experiments' ``exp_<name>`` datasets, datasets since unregistered) that is
        exactly one of the user's keys (``key_owner``)."""
        keys = [k for name in self.registry.datasets
                for k in (self.seq_key(name, user_id), self.events_key(name, user_id))]
        for k in found:
            owner = self.key_owner(k)
            if owner is not None and owner[0] == user_id:
                k = k.decode() if isinstance(k, bytes) else k
                if k not in keys:
                    keys.append(k)
        return keys

    def removed_per_dataset(self, user_id: str, keys: list[str], sizes: list[int]) -> dict[str, int]:
        """``{"kv.<dataset>": events}`` of a deletion's replies (payloads count when a sequence lost its ids)."""
        out: dict[str, int] = {}
        for k, n in zip(keys, sizes):
            name = "kv." + self._dataset_of(user_id, k)
            out[name] = max(out.get(name, 0), int(n))
        return {k: v for k, v in out.items() if v}

    def _dirty_members(self, user_id: str, keys: list[str]) -> list[str]:
        return sorted({f"{self._dataset_of(user_id, k)}:{user_id}" for k in keys})

    def _dataset_of(self, user_id: str, key: str) -> str:
        owner = self.key_owner(key)
        if owner is None or owner[0] != user_id:  # dataset_keys_of gave it: cannot happen
            raise ValueError(f"key {key!r} is not a sequence or payload key of user {user_id!r}")
        return owner[1]

    def delete_user(self, user_id: str) -> dict[str, int]:
        """Delete every dataset key of the user; returns events removed per dataset.

        The user's keys share one slot, so finding them reads that slot only on a cluster
        (CLUSTER GETKEYSINSLOT); a single node SCANs its keyspace for the user's pattern. The
        deletion itself is one script on that slot. Indexing deduplicates on the stored
        event ids, so events of the user arriving afterwards are stored (and aggregated) as new.
        """
        if self._single_node:
            found = list(self.client.scan_iter(match=self.user_keys_pattern(user_id), count=1000))
        else:
            slot = self.client.keyslot(self.user_slot_key(user_id))
            found = self.client.cluster_get_keys_in_slot(slot, self.client.cluster_countkeysinslot(slot) or 1)
        keys = self.dataset_keys_of(user_id, found)
        sizes = self.client.eval(_DELETE_USER_LUA, len(keys), *keys)
        self.client.srem(self.dirty_key(self.bucket_of(user_id)), *self._dirty_members(user_id, keys))
        return self.removed_per_dataset(user_id, keys, sizes)

    async def delete_user_async(self, aclient, user_id: str) -> dict[str, int]:
        """``delete_user`` through a redis.asyncio client (Redis or RedisCluster): the API's path."""
        if hasattr(aclient, "get_nodes"):
            slot = aclient.keyslot(self.user_slot_key(user_id))
            found = await aclient.cluster_get_keys_in_slot(slot, await aclient.cluster_countkeysinslot(slot) or 1)
        else:
            found = [k async for k in aclient.scan_iter(match=self.user_keys_pattern(user_id), count=1000)]
        keys = self.dataset_keys_of(user_id, found)
        sizes = await aclient.eval(_DELETE_USER_LUA, len(keys), *keys)
        await aclient.srem(self.dirty_key(self.bucket_of(user_id)), *self._dirty_members(user_id, keys))
        return self.removed_per_dataset(user_id, keys, sizes)

    # --- read -----------------------------------------------------------------------
    def read(self, user_id: str, limits: Mapping[str, int]) -> dict[str, list[bytes]]:
        """The newest ``limits[dataset]`` stored events of each dataset, newest first.

        One round trip whatever the number of datasets. A limit above the dataset's
        retention is capped at the retention.
        """
        if not limits:
            return {}
        keys, args = self.read_request(user_id, limits)
        rows = self._read(keys=keys, args=args)
        return {name: [r for r in row if r is not None] for name, row in zip(limits, rows)}

    def read_request(self, user_id: str, limits: Mapping[str, int]) -> tuple[list[str], list[int]]:
        """KEYS and ARGV of the read script (shared with the async reader of the serving API)."""
        names = list(limits)
        keys: list[str] = []
        args: list[int] = []
        for name in names:
            ds = self.registry.datasets.get(name)
            if ds is None:
                raise KeyError(f"unknown dataset {name!r}; known: {sorted(self.registry.datasets)}")
            k = int(limits[name])
            if k <= 0:
                raise ValueError(f"limit for {name!r} must be positive, got {k}")
            keys += [self.seq_key(name, user_id), self.events_key(name, user_id)]
            args.append(min(k, ds.retention))
        return keys, args

    def length(self, dataset: str, user_id: str) -> int:
        """Events currently held (may exceed retention until the next trim)."""
        return int(self.client.zcard(self.seq_key(dataset, user_id)))

    # --- trim -----------------------------------------------------------------------
    def trim(self, max_keys: int = 5000) -> TrimStats:
        """Trim up to ``max_keys`` keys written since the last trim, in bulk."""
        stats = TrimStats()
        per_bucket = max(1, max_keys // DIRTY_BUCKETS)
        pending: list[tuple[str, str]] = []
        for bucket in range(DIRTY_BUCKETS):
            members = self.client.spop(self.dirty_key(bucket), per_bucket) or []
            for m in members:
                m = m.decode() if isinstance(m, bytes) else m
                # "<dataset>:<user_id>": a dataset name has no ':', so the first one ends it.
                dataset, _, user_id = m.partition(":")
                if dataset in self.registry.datasets:
                    pending.append((dataset, user_id))
        if not pending:
            return stats
        calls = []
        now = time.time()
        for dataset, user_id in pending:
            ds = self.registry.datasets[dataset]
            # An experiment's dataset (exp_<experiment>_<rule>) expires at the experiment's end.
            calls.append(([self.seq_key(dataset, user_id), self.events_key(dataset, user_id)],
                          [ds.retention, ds.ttl_seconds(now)]))
        removed = run_script_batch(self.client, self._trim, calls)
        stats.keys_checked = len(pending)
        stats.events_removed = int(sum(removed))
        return stats

    def delete_dataset(self, dataset: str, count: int = 1000) -> int:
        """Delete every user's keys of ``dataset`` (an ended experiment's); returns keys deleted.
        SCANs the keyspace (every node of a cluster): a clean-up task's cost, not a serving one's."""
        return sum(self._unlink(keys) for keys in self._dataset_keys(dataset, count))

    def expire_dataset(self, dataset: str, seconds: int, count: int = 1000) -> int:
        """Give every user's keys of ``dataset`` a TTL of ``seconds`` (an experiment's, set where
        it is loaded, whatever the trimmer's registry knows yet); returns keys found."""
        found = 0
        for keys in self._dataset_keys(dataset, count):
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                pipe.expire(k, max(1, int(seconds)))
            found += int(sum(bool(x) for x in pipe.execute()))
        return found

    def _dataset_keys(self, dataset: str, count: int) -> Iterator[list]:
        pattern = f"{self.prefix}:{{*}}:{dataset.translate(_GLOB_SPECIAL)}:[zh]"
        batch: list = []
        for key in self.client.scan_iter(match=pattern, count=count):
            owner = self.key_owner(key)
            if owner is None or owner[1] != dataset:  # exactly the dataset's keys, whatever a user id holds
                continue
            batch.append(key)
            if len(batch) >= count:
                yield batch
                batch = []
        if batch:
            yield batch

    def _unlink(self, keys: list) -> int:
        # One command per key on a cluster (keys of different users live in different slots).
        if self._single_node:
            return int(self.client.unlink(*keys))
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.unlink(k)
        return int(sum(pipe.execute()))

    def trim_all(self, max_rounds: int = 1000) -> TrimStats:
        """Trim until no key is dirty (tests, shutdown, batch loads)."""
        total = TrimStats()
        for _ in range(max_rounds):
            s = self.trim()
            if not s.keys_checked:
                break
            total.keys_checked += s.keys_checked
            total.events_removed += s.events_removed
        return total


class ErasureRequests:
    """User erasures whose KV part is done and lake part is not: the API deletes a user's KV
    state at once and records the request here; ``python -m batch delete-user --pending`` (the
    user_erasure DAG) deletes the lake's rows, writes the audit row and completes the request::

        {p}:erasure:requests   HASH  user_id -> JSON {request_id, requested_by, reason,
                                                      requested_at, kv_deleted_at, kv_removed}
    """

    def __init__(self, prefix: str = "us"):
        self.key = f"{prefix}:erasure:requests"

    async def record_async(self, aclient, user_id: str, request: Mapping) -> None:
        # A second request for the same user before the lake part ran replaces the first: its
        # requested_at is later, so the lake deletion it leads to covers both.
        await aclient.hset(self.key, user_id, json.dumps(dict(request), sort_keys=True))

    def record(self, client, user_id: str, request: Mapping) -> None:
        client.hset(self.key, user_id, json.dumps(dict(request), sort_keys=True))

    def pending(self, client) -> dict[str, tuple[bytes, dict]]:
        """user_id -> (the stored value, the request)."""
        out = {}
        for user, raw in client.hgetall(self.key).items():
            user = user.decode() if isinstance(user, bytes) else user
            out[user] = (raw, json.loads(raw))
        return out

    def complete(self, client, user_id: str, raw: bytes) -> bool:
        """Remove the request if it is still ``raw`` (a newer request for the user stays pending)."""
        return bool(client.eval(_COMPLETE_LUA, 1, self.key, user_id, raw))


_COMPLETE_LUA = ("if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
                 "return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0")


def run_trimmer(store: SequenceStore, interval_s: float = 1.0, stop=None, on_stats=None) -> None:
    """Trim forever (or until ``stop()`` is true): the KV layer's background clean-up."""
    while stop is None or not stop():
        started = time.monotonic()
        stats = store.trim()
        if on_stats:
            on_stats(stats, time.monotonic() - started)
        if stats.keys_checked == 0:
            time.sleep(interval_s)


def connect(target: "Settings | str", cluster: bool | None = None, **kwargs):
    """The KV layer's redis-py client: ``connect(settings)`` reaches ``settings.kv_url``, as a
    RedisCluster (commands routed by slot) when ``settings.kv_cluster``. Every part of the
    platform connects through here. A URL instead of settings (``cluster`` then defaults to
    False) is for a KV server of one's own: tests, benchmarks, Spark executors given the URL."""
    import redis

    if isinstance(target, str):
        url, in_cluster = target, bool(cluster)
    else:
        url, in_cluster = target.kv_url, target.kv_cluster if cluster is None else cluster
    if in_cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def connect_async(settings: "Settings", max_connections: int = 64, timeout_s: float = 2.0):
    """``connect``'s redis.asyncio counterpart (the serving API's), from ``settings``. A single
    node gets a blocking pool: a 100-user batch waits for a free connection (up to ``timeout_s``)
    instead of failing. A cluster gets a RedisCluster with ``max_connections`` per node."""
    import redis.asyncio as aioredis

    timeouts = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    if settings.kv_cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(settings.kv_url, max_connections=max_connections, **timeouts)
    pool = aioredis.BlockingConnectionPool.from_url(settings.kv_url, max_connections=max_connections,
                                                    timeout=timeout_s, **timeouts)
    return aioredis.Redis(connection_pool=pool)


def decode_all(rows: Sequence[bytes]) -> list[dict]:
    from usersignals.events import decode_stored

    return [decode_stored(r) for r in rows]
