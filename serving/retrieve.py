"""Stage 1, retrieve: one round trip to the KV layer per user for every dataset a tenant reads.

It over-fetches (twice the tenant's length, capped at the retention) when the tenant has
filters, so that filtering still leaves a full sequence in the common case.
"""
from __future__ import annotations

import asyncio

import orjson

from usersignals.aggregates import agg_key, decode_state
from usersignals.kv import READ_JSON_LUA, SequenceStore
from usersignals.registry import Registry, Tenant

from serving.kv_client import as_kv
from serving.model import UserSequences

_READ = READ_JSON_LUA.encode()


class Retriever:
    def __init__(self, kv, registry: Registry, prefix: str):
        self.kv = as_kv(kv)
        self.prefix = prefix
        self.layout = SequenceStore(None, registry, prefix)  # key layout and read arguments only

    async def warm(self) -> None:
        """Connections open and the read script loaded before the first request."""
        await self.kv.warm([_READ])

    @staticmethod
    def fetch_limits(tenant: Tenant, registry: Registry) -> dict[str, int]:
        return registry.fetch_limits(tenant)

    async def one(self, user_id: str, limits: dict[str, int], with_state: bool, now_ms: int,
                  parse: bool = True) -> UserSequences:
        """``parse=False`` keeps each sequence as the raw JSON array the KV layer returned,
        for responses that pass events through untouched."""
        keys, args = self.layout.read_request(user_id, limits)
        if with_state:
            keys = keys + [agg_key(self.prefix, user_id)]
        rows = await self.kv.evalsha(_READ, keys, args)
        seqs = {name: orjson.loads(row) if parse else row for name, row in zip(limits, rows)}
        state = {}
        if with_state and len(rows) > len(args):
            flat = rows[len(args)]
            state = decode_state(dict(zip(flat[0::2], flat[1::2])), now_ms)
        return UserSequences(user_id, seqs, state)

    async def many(self, user_ids: list[str], tenant: Tenant, registry: Registry, now_ms: int,
                   parse: bool = True) -> list[UserSequences]:
        limits = self.fetch_limits(tenant, registry)
        with_state = bool(tenant.views)
        if len(user_ids) == 1:
            return [await self.one(user_ids[0], limits, with_state, now_ms, parse)]
        return list(await asyncio.gather(*(self.one(u, limits, with_state, now_ms, parse) for u in user_ids)))
