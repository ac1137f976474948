"""Tenants at runtime: versioned configs that can change without a restart, and their keys.

Configs start from the registry file (version 1). ``TenantDirectory.put`` validates a new
config with the registry's own rules, gives it the next version and stores it in the KV
layer (``{{p}:tenants}`` hash, history in ``{{p}:tenants}:history:<name>``: one hash tag, so the
write is one transaction on a Redis Cluster too), so every API
process picks it up within ``sync_interval_s``. A request holds the config object it
started with, so a swap never affects requests in flight. The limits each config sets
(``max_concurrency``, ``max_rps``) are enforced by serving/limits.py.

A stored record that cannot be read (not JSON, no version, a config the registry refuses) is
skipped, reported with its key and field (serving/background.py), and the others still apply;
a PUT of that tenant replaces it.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass

import orjson

from usersignals.registry import Registry, Tenant, parse_tenant, tenant_to_dict

from serving.background import TENANT_SYNC, LoopErrors, every


HISTORY = 50


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_matches(presented: str | None, expected_sha256: str) -> bool:
    """Constant-time comparison of a presented key against a stored sha256 hash."""
    if not presented or not expected_sha256:
        return False
    return hmac.compare_digest(sha256_hex(presented), expected_sha256)


@dataclass(frozen=True)
class TenantConfig:
    tenant: Tenant
    version: int
    updated_at: float


class CorruptRecord(ValueError):
    """A stored tenant record that is not ``{"version": n >= 1, "updated_at"?: s, "config": {...}}``."""


def read_record(raw: bytes | str) -> tuple[int, float, dict]:
    """(version, updated_at, config) of a stored record; raises CorruptRecord saying what is wrong."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptRecord(f"not JSON ({exc}): {raw[:60]!r}") from None
    if not isinstance(record, dict):
        raise CorruptRecord(f"expected an object with version and config, got {type(record).__name__}")
    version = record.get("version")
    if type(version) is not int or version < 1:
        raise CorruptRecord(f"version must be an integer >= 1, got {version!r}")
    config = record.get("config")
    if not isinstance(config, dict):
        raise CorruptRecord(f"config must be an object, got {type(config).__name__}")
    updated_at = record.get("updated_at", 0.0)
    if type(updated_at) not in (int, float):
        raise CorruptRecord(f"updated_at must be epoch seconds, got {updated_at!r}")
    return version, float(updated_at), config


class TenantDirectory:
    def __init__(self, registry: Registry, aclient=None, prefix: str = "us", errors: LoopErrors | None = None):
        self.registry = registry
        self.client = aclient
        self.errors = errors or LoopErrors()  # where sync reports the records it skips
        # One hash tag: the config and its history share a slot, so put() is one transaction on a cluster.
        self.key = f"{{{prefix}:tenants}}"
        self.history_prefix = f"{{{prefix}:tenants}}:history:"
        # Where configs were stored before the hash tag; read once, on the first sync (see sync()).
        self.legacy_key: str | None = f"{prefix}:tenants"
        now = time.time()
        self._configs = {n: TenantConfig(t, 1, now) for n, t in registry.tenants.items()}
        # The newest version stored per tenant, applied or not (a config this registry refuses):
        # a put() numbers past it, so other processes do not ignore it as older than what they serve.
        self._stored_versions: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def get(self, name: str) -> TenantConfig | None:
        return self._configs.get(name)

    def all(self) -> dict[str, TenantConfig]:
        return dict(self._configs)

    async def put(self, name: str, body: dict) -> TenantConfig:
        """Validate and apply a tenant config; raises RegistryError with the reason if invalid."""
        tenant = parse_tenant(name, body, self.registry)
        async with self._lock:
            await self.sync()
            current = self._configs.get(name)
            version = max(current.version if current else 0, self._stored_versions.get(name, 0)) + 1
            cfg = TenantConfig(tenant, version, time.time())
            if self.client is not None:
                record = orjson.dumps({"version": version, "updated_at": cfg.updated_at,
                                       "config": tenant_to_dict(tenant)})
                pipe = self.client.pipeline(transaction=True)
                pipe.hset(self.key, name, record)
                pipe.lpush(self.history_prefix + name, record)
                pipe.ltrim(self.history_prefix + name, 0, HISTORY - 1)
                await pipe.execute()
            self._configs[name] = cfg
            self._stored_versions[name] = version
            return cfg

    async def history(self, name: str) -> list[dict]:
        if self.client is None:
            return []
        return [orjson.loads(r) for r in await self.client.lrange(self.history_prefix + name, 0, HISTORY - 1)]

    async def sync(self) -> int:
        """Apply configs other processes stored with a newer version; returns how many changed."""
        if self.client is None:
            return 0
        stored = {n: (self.key, r) for n, r in (await self.client.hgetall(self.key)).items()}
        if self.legacy_key is not None:
            # Configs stored under the old key (before the hash tag) are still served; a newer
            # version under the new key wins, and the next put() stores them there.
            legacy = await self.client.hgetall(self.legacy_key)
            stored = {**{n: (self.legacy_key, r) for n, r in legacy.items() if n not in stored}, **stored}
            self.legacy_key = None
        changed = 0
        for raw_name, (key, raw) in stored.items():
            name = raw_name.decode(errors="replace") if isinstance(raw_name, bytes) else raw_name
            try:
                version, updated_at, config = read_record(raw)
            except CorruptRecord as exc:
                self.errors.report(TENANT_SYNC, f"skipped the tenant record at key {key} field {name!r}: {exc}")
                continue
            self._stored_versions[name] = version
            current = self._configs.get(name)
            if current is not None and current.version >= version:
                continue
            try:
                tenant = parse_tenant(name, config, self.registry)
            except Exception as exc:  # noqa: BLE001 - e.g. written against another registry: keep what we have
                self.errors.report(TENANT_SYNC, f"skipped version {version} of the tenant record at key {key} "
                                                f"field {name!r}: {type(exc).__name__}: {exc}")
                continue
            self._configs[name] = TenantConfig(tenant, version, updated_at)
            changed += 1
        return changed

    async def run_sync(self, interval_s: float = 1.0) -> None:
        """``sync`` every ``interval_s`` until cancelled; a pass that fails (the KV layer is
        unreachable) is reported and the configs we have are kept."""
        await every(interval_s, TENANT_SYNC, self.sync, self.errors)
