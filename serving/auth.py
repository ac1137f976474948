"""Who may call what: a tenant's key (``X-API-Key``) reads that tenant; the admin key
(``X-Admin-Key``, from ``USERSIGNALS_ADMIN_KEY``) reads every tenant and changes them. A user's
raw events (``GET /v1/users/{id}/events``) take any registered tenant's key, the read-only key
(``X-Read-Key``, from ``USERSIGNALS_READ_KEY``; none when empty) or the admin key.

401 when no key was sent, 403 when the key sent is not the right one. Keys are compared by
their sha256, in constant time (``serving.tenants.key_matches``); only hashes are kept.
The headers are ``APIKeyHeader`` security schemes, so the OpenAPI spec declares them.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from serving.tenants import TenantConfig, key_matches, sha256_hex
from usersignals.settings import Settings

tenant_key = APIKeyHeader(name="X-API-Key", scheme_name="TenantKey", auto_error=False,
                          description="A tenant's API key: reads that tenant's features.")
admin_key = APIKeyHeader(name="X-Admin-Key", scheme_name="AdminKey", auto_error=False,
                         description="The admin key (USERSIGNALS_ADMIN_KEY): reads every tenant, changes tenants.")

read_key = APIKeyHeader(name="X-Read-Key", scheme_name="ReadKey", auto_error=False,
                        description="The read-only key (USERSIGNALS_READ_KEY): reads users' raw events, "
                                    "nothing else.")


def admin_key_sha256(settings: Settings) -> str:
    """The hash of the admin key the app accepts (``settings.admin_key``, taken when it is created)."""
    return sha256_hex(settings.admin_key)


def read_key_sha256(settings: Settings) -> str:
    """The hash of the read-only key the app accepts; empty (none accepted) when the setting is."""
    return sha256_hex(settings.read_key) if settings.read_key else ""


@dataclass(frozen=True, slots=True)
class Keys:
    api_key: str | None
    admin_key: str | None
    is_admin: bool

    @classmethod
    def of(cls, api_key: bytes | None, admin: bytes | None, admin_sha256: str) -> "Keys":
        """The keys of raw header values (the ASGI path of POST /v1/features)."""
        api = api_key.decode("latin-1") if api_key else None
        adm = admin.decode("latin-1") if admin else None
        return cls(api, adm, key_matches(adm, admin_sha256))


async def keys(request: Request, api_key: str | None = Security(tenant_key),
               admin: str | None = Security(admin_key)) -> Keys:
    """The keys a request carries (either may be absent), and whether the admin key is right."""
    return Keys(api_key, admin, key_matches(admin, request.app.state.admin_sha256))


def authorize(cfg: TenantConfig, k: Keys) -> None:
    """May these keys read this tenant? Raises 401 (no key) or 403 (not this tenant's key)."""
    if k.is_admin or key_matches(k.api_key, cfg.tenant.api_key_sha256):
        return
    if not k.api_key and not k.admin_key:
        raise HTTPException(401, "missing API key: send the tenant's key in X-API-Key")
    raise HTTPException(403, f"this key is not allowed to read tenant {cfg.tenant.name!r}")


async def require_admin(request: Request, admin: str | None = Security(admin_key)) -> None:
    """Admin routes: 401 without an admin key, 403 with a wrong one."""
    if not admin:
        raise HTTPException(401, "missing admin key: send it in X-Admin-Key")
    if not key_matches(admin, request.app.state.admin_sha256):
        raise HTTPException(403, "wrong admin key")


async def require_reader(request: Request, api_key: str | None = Security(tenant_key),
                         reader: str | None = Security(read_key), admin: str | None = Security(admin_key)) -> None:
    """Reads of user data: any registered tenant's key, the read-only key or the admin key;
    401 without any, 403 when none of those sent is right."""
    state = request.app.state
    if key_matches(reader, state.read_sha256) or key_matches(admin, state.admin_sha256):
        return
    if api_key:
        digest = sha256_hex(api_key)
        if any(c.tenant.api_key_sha256 and hmac.compare_digest(digest, c.tenant.api_key_sha256)
               for c in state.directory.all().values()):
            return
    if not (api_key or reader or admin):
        raise HTTPException(401, "missing key: send a tenant's key in X-API-Key, the read-only key in "
                                 "X-Read-Key or the admin key in X-Admin-Key")
    raise HTTPException(403, "this key may not read user data: it is not a registered tenant's key, "
                             "the read-only key or the admin key")
