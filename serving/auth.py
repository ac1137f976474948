"""Who may call what: a tenant's key (``X-API-Key``) reads that tenant; the admin key
(``X-Admin-Key``, from ``USERSIGNALS_ADMIN_KEY``) reads every tenant and changes them.

401 when no key was sent, 403 when the key sent is not the right one. Keys are compared by
their sha256, in constant time (``serving.tenants.key_matches``); only hashes are kept.
Both headers are ``APIKeyHeader`` security schemes, so the OpenAPI spec declares them.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from serving.tenants import TenantConfig, key_matches, sha256_hex
from usersignals.settings import Settings

tenant_key = APIKeyHeader(name="X-API-Key", scheme_name="TenantKey", auto_error=False,
                          description="A tenant's API key: reads that tenant's features.")
admin_key = APIKeyHeader(name="X-Admin-Key", scheme_name="AdminKey", auto_error=False,
                         description="The admin key (USERSIGNALS_ADMIN_KEY): reads every tenant, changes tenants.")


def admin_key_sha256(settings: Settings) -> str:
    """The hash of the admin key the app accepts (``settings.admin_key``, taken when it is created)."""
    return sha256_hex(settings.admin_key)


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
