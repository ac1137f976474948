"""Per-user aggregate state and the views derived from it (aggregator / view split).

The aggregator (in the streaming job) folds each *new* indexed event into one small hash
per user: a time-decayed engagement count per item category, updated server-side by a
Lua script (no client read-modify-write). Replays do not double count: only events whose
``ZADD`` created a new member are aggregated. Views turn that state into compact
features at request time; several views share the one state::

    {p}:{<user_id>}:agg   HASH   c:<category> -> "<decayed count>:<as of, epoch ms>"

How much one event of a type adds is that type's ``aggregate_weight`` in the registry. State
expires 90 days after the user's last event.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

from usersignals.registry import Registry
from usersignals.resp import execute_packed, is_single_node, pack, raise_first_error, run_script_batch

HALF_LIFE_MS = 14 * 24 * 3600 * 1000
TTL_MS = 90 * 24 * 3600 * 1000

UPDATE_LUA = """
local hl = tonumber(ARGV[1])
for i = 3, #ARGV, 3 do
  local f = ARGV[i]
  local ts = tonumber(ARGV[i + 1])
  local w = tonumber(ARGV[i + 2])
  local cur = redis.call('HGET', KEYS[1], f)
  local v, t = 0, ts
  if cur then
    local sep = string.find(cur, ':', 1, true)
    v = tonumber(string.sub(cur, 1, sep - 1))
    t = tonumber(string.sub(cur, sep + 1))
  end
  if ts >= t then
    v = v * math.pow(0.5, (ts - t) / hl) + w
    t = ts
  else
    v = v + w * math.pow(0.5, (t - ts) / hl)
  end
  redis.call('HSET', KEYS[1], f, string.format('%.6f:%d', v, t))
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def agg_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:{{{user_id}}}:agg"


# Categories held, then the state deleted: one atomic call on the user's slot.
DELETE_LUA = "local n = redis.call('HLEN', KEYS[1]) redis.call('DEL', KEYS[1]) return n"


def delete_user(client, prefix: str, user_id: str) -> int:
    """Delete the user's aggregate state (erasure); returns how many categories it held."""
    return int(client.eval(DELETE_LUA, 1, agg_key(prefix, user_id)))


async def delete_user_async(aclient, prefix: str, user_id: str) -> int:
    """``delete_user`` through a redis.asyncio client (the API's)."""
    return int(await aclient.eval(DELETE_LUA, 1, agg_key(prefix, user_id)))


class AggregateStore:
    def __init__(self, client, registry: Registry, prefix: str = "us"):
        self.client = client
        self.prefix = prefix
        # Event type -> weight, from the registry (the job's aggregator reads no other table of weights).
        self.weights = registry.aggregate_weights()
        self._update = client.register_script(UPDATE_LUA)
        self._single_node = is_single_node(client)

    def update(self, events: Iterable[tuple[str, str, int, str]]) -> int:
        """Fold (user_id, category, ts, event_type) tuples into each user's state, one call per user."""
        per_user: dict[str, list] = {}
        for user, category, ts, event_type in events:
            w = self.weights[event_type]  # only registered types are indexed, so only they reach here
            per_user.setdefault(user, []).extend((f"c:{category}", ts, w))
        if not per_user:
            return 0
        if self._single_node:
            self._update_packed(per_user)
            return len(per_user)
        run_script_batch(self.client, self._update, [([agg_key(self.prefix, user)], [HALF_LIFE_MS, TTL_MS, *args])
                                                     for user, args in per_user.items()])
        return len(per_user)


    def _update_packed(self, per_user: dict[str, list]) -> None:
        sha = self._update.sha.encode()
        head = (str(HALF_LIFE_MS).encode(), str(TTL_MS).encode())
        parts = []
        for user, args in per_user.items():
            encoded = [a if isinstance(a, bytes) else str(a).encode() for a in args]
            parts.append(pack(b"EVALSHA", sha, b"1", agg_key(self.prefix, user).encode(), *head, *encoded))
        replies = execute_packed(self.client, b"".join(parts), len(parts))
        from redis.exceptions import NoScriptError

        if any(isinstance(r, NoScriptError) for r in replies):
            self.client.script_load(UPDATE_LUA)  # the server lost its scripts (restart): load, retry once
            replies = execute_packed(self.client, b"".join(parts), len(parts))
        raise_first_error(replies)


def decode_state(raw: Mapping[bytes | str, bytes | str], now_ms: int) -> dict[str, float]:
    """Category -> count decayed to ``now_ms``."""
    out: dict[str, float] = {}
    for k, v in raw.items():
        k = k.decode() if isinstance(k, bytes) else k
        v = v.decode() if isinstance(v, bytes) else v
        if not k.startswith("c:"):
            continue
        value, _, as_of = v.partition(":")
        try:
            decayed = float(value) * math.pow(0.5, max(0, now_ms - int(as_of)) / HALF_LIFE_MS)
        except ValueError:
            continue
        out[k[2:]] = decayed
    return out


# --- views -------------------------------------------------------------------------

def category_affinity(state: Mapping[str, float], k: int = 5) -> dict[str, float]:
    """The user's top-k categories with weights summing to 1."""
    total = sum(state.values())
    if total <= 0:
        return {}
    top = sorted(state.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return {c: round(v / total, 4) for c, v in top}


def top_category(state: Mapping[str, float]) -> str | None:
    if not state:
        return None
    return min(state.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def activity(state: Mapping[str, float]) -> float:
    """Decayed engagement, all categories: a rough recency-weighted activity level."""
    return round(sum(state.values()), 4)


VIEW_FUNCTIONS = {"category_affinity": category_affinity, "top_category": top_category, "activity": activity}


def compute_views(names: Iterable[str], state: Mapping[str, float]) -> dict:
    return {name: VIEW_FUNCTIONS[name](state) for name in names}
