"""Tenants at runtime: list them (a tenant's key sees its own, the admin key all), create or
change one (admin), read a tenant's config history (admin), re-read the registry file (admin).

A tenant's config is validated by the registry's own rules (``usersignals.registry``); the
OpenAPI spec states those rules as JSON Schema, built from this process's registry
(``document``), so that what the spec calls valid is what the API accepts.
"""
from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, Field

from usersignals.registry import FORMATS, Registry, RegistryError, load_registry, parse_tenant, tenant_to_dict

from serving import auth
from serving.errors import ORJSONResponse, error_responses
from serving.tenants import TenantConfig, sha256_hex

router = APIRouter(tags=["tenants"], default_response_class=ORJSONResponse)

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN[1:-1])  # fullmatch: Python's $ would also match before a final newline
UINT64_MAX = 2**64 - 1  # the largest integer a JSON body can carry here (orjson); larger ones read as floats
TENANT_PATH = "/v1/tenants/{name}"

_EXAMPLE = {"sequences": {"clicks": 50, "repins": 20}, "enrichments": ["item_category"], "format": "json",
            "description": "Related items: recent clicks and saves.", "views": ["top_category"],
            "filters": {"dedup_items": True, "max_age_s": 604800}, "max_concurrency": 32, "max_rps": 200,
            "timeout_ms": 100, "api_key": "related-items-secret"}


class TenantView(BaseModel):
    name: str
    version: int = Field(..., description="Config version: 1 from the registry file, +1 per change.")
    updated_at: float = Field(..., description="When this version was applied, epoch seconds.")
    config: dict[str, Any] = Field(..., description="The config (see TenantConfig); the key's hash is not shown.")


class Tenants(BaseModel):
    tenants: list[TenantView]


class TenantVersion(BaseModel):
    version: int
    updated_at: float
    config: dict[str, Any]


class TenantVersions(BaseModel):
    name: str
    versions: list[TenantVersion] = Field(..., description="Newest first, at most 50.")


class Reloaded(BaseModel):
    changed: list[str] = Field(..., description="Tenants whose config the registry file changed.")


def tenant_view(cfg: TenantConfig) -> dict:
    body = tenant_to_dict(cfg.tenant)
    body.pop("api_key_sha256", None)
    return {"name": cfg.tenant.name, "version": cfg.version, "updated_at": cfg.updated_at, "config": body}


@router.get("/v1/tenants", summary="Tenants and their current config versions", response_model=None,
            responses={200: {"model": Tenants}, **error_responses(
                401, 403, notes={401: "No key: send a tenant key (X-API-Key) or the admin key (X-Admin-Key).",
                                 403: "The key is neither a tenant's nor the admin key."})})
async def tenants(request: Request, keys: auth.Keys = Depends(auth.keys)):
    directory = request.app.state.directory
    if keys.is_admin:
        visible = directory.all().values()
    else:
        visible = [c for c in directory.all().values() if auth.key_matches(keys.api_key, c.tenant.api_key_sha256)]
        if not visible:
            raise HTTPException(401 if not keys.api_key else 403, "send a tenant key (X-API-Key) or the admin key")
    return {"tenants": [tenant_view(c) for c in visible]}


def _name(example: str):
    return Path(..., description="Tenant name: lowercase snake_case, 1 to 63 characters.", examples=[example],
                json_schema_extra={"pattern": NAME_PATTERN})


@router.put(TENANT_PATH, summary="Create or change a tenant (admin); applied without restart",
            response_model=None, dependencies=[Depends(auth.require_admin)],
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/TenantConfigInput"}, "example": _EXAMPLE}}}},
            responses={200: {"model": TenantView}, **error_responses(
                400, 401, 403, 413, notes={400: "The body is not JSON or not a valid tenant config; the message "
                                                "names the rule. A name that is not lowercase snake_case."})})
async def put_tenant(request: Request, name: str = _name("related_items")):
    state = request.app.state
    directory = state.directory
    if not _NAME_RE.fullmatch(name):
        raise HTTPException(400, f"tenants.{name}: names must be lowercase snake_case (a-z, 0-9, _), "
                                 "1 to 63 characters")
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, f"body is not JSON: {exc}") from None
    body = check_types(body)
    if isinstance(body, dict) and "api_key" in body:  # accept a plain key, store only its hash
        body = dict(body)
        body["api_key_sha256"] = sha256_hex(body.pop("api_key"))
    elif isinstance(body, dict) and "api_key_sha256" not in body and directory.get(name):
        body = {**body, "api_key_sha256": directory.get(name).tenant.api_key_sha256}
    try:
        cfg = await directory.put(name, body)
    except RegistryError as exc:
        raise HTTPException(400, str(exc)) from None
    state.metrics.tenant_config_version.labels(name).set(cfg.version)
    return tenant_view(cfg)


def check_types(body: Any) -> Any:
    """What the registry's rules let through but a config must not carry, or should accept:

    - a description, key or key hash that is not a string (the registry would store ``str(...)``
      of it, or no key for a falsy hash), or a malformed hash sent along with a plain key;
    - integers written as ``5.0`` are integers (as JSON Schema says): read as ``5``.
    """
    if not isinstance(body, dict):
        return body  # the registry says "expected an object"
    for field, rule in (("description", "a string"), ("api_key", "a non-empty string"),
                        ("api_key_sha256", "a string of 64 lowercase hex characters, or empty")):
        value = body.get(field, "")
        if field in body and (not isinstance(value, str) or (field == "api_key" and not value)
                              or (field == "api_key_sha256" and not _SHA256_OR_EMPTY.fullmatch(value))):
            got = repr(value) if field == "description" else type(value).__name__  # no key echoed
            raise HTTPException(400, f"tenants.{field}: must be {rule}, got {got}")
    body = {k: _integral(v) if k in _INT_FIELDS else v for k, v in body.items()}
    if isinstance(body.get("sequences"), dict):
        body["sequences"] = {k: _integral(v) for k, v in body["sequences"].items()}
    filters = body.get("filters")
    if isinstance(filters, dict):
        filters = {k: _integral(v) if k == "max_age_s" else v for k, v in filters.items()}
        if isinstance(filters.get("min_dwell_ms"), dict):
            filters["min_dwell_ms"] = {k: _integral(v) for k, v in filters["min_dwell_ms"].items()}
        body["filters"] = filters
    return body


_INT_FIELDS = ("max_concurrency", "timeout_ms")
_SHA256_OR_EMPTY = re.compile("(?:[0-9a-f]{64})?")


def _integral(value: Any) -> Any:
    """5.0 -> 5 (within what the spec allows; a larger float stays a float and is refused)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= UINT64_MAX:
        return int(value)
    return value


@router.get(TENANT_PATH + "/versions", summary="A tenant's config history, newest first (admin)",
            response_model=None, dependencies=[Depends(auth.require_admin)],
            responses={200: {"model": TenantVersions}, **error_responses(401, 403, 404,
                                                                         notes={404: "Unknown tenant."})})
async def tenant_versions(request: Request, name: str = _name("homefeed_ranking")):
    directory = request.app.state.directory
    if directory.get(name) is None:
        raise HTTPException(404, f"unknown tenant {name!r}")
    history = await directory.history(name)
    for h in history:
        h["config"].pop("api_key_sha256", None)
    return {"name": name, "versions": history}


@router.post("/v1/admin/reload", summary="Re-read the registry file: datasets, enrichments, views and "
                                          "changed tenants, without a restart (admin)",
             response_model=None, dependencies=[Depends(auth.require_admin)],
             responses={200: {"model": Reloaded}, **error_responses(
                 400, 401, 403, 413, notes={400: "The registry file is not valid, or a tenant served now does "
                                                 "not fit it; the message says why."})})
async def reload(request: Request):
    """Datasets, enrichments and views apply at once (``serving.app.apply_registry``); then each
    tenant the file changed is stored as a new version, as PUT would."""
    from serving.app import apply_registry, registry_key

    state = request.app.state
    try:
        fresh = load_registry(state.settings.registry_path)
    except RegistryError as exc:
        raise HTTPException(400, str(exc)) from None
    for name, cfg in state.directory.all().items():
        if name in fresh.tenants:
            continue  # the file redefines it, validated against the file
        try:  # a tenant changed at runtime must still fit: refuse a registry that breaks it
            parse_tenant(name, tenant_to_dict(cfg.tenant), fresh)
        except RegistryError as exc:
            raise HTTPException(400, f"tenant {name!r} (version {cfg.version}) does not fit the new "
                                     f"registry: {exc}") from None
    apply_registry(request.app, fresh)
    await state.aclient.set(registry_key(state), fresh.digest)  # the other API processes follow it
    changed = []
    for name, tenant in fresh.tenants.items():
        current = state.directory.get(name)
        if current is None or current.tenant != tenant:
            await state.directory.put(name, tenant_to_dict(tenant))
            changed.append(name)
    return {"changed": changed}


def tenant_config_schema(registry: Registry, *, write: bool) -> dict:
    """A tenant's config as JSON Schema, from the registry's rules (``parse_tenant``): as the API
    accepts it (``write``: sequences required, a plain ``api_key`` or its hash may be sent) or
    as it shows it (every field, no key)."""
    big = {"type": "integer", "minimum": 1, "maximum": UINT64_MAX}

    def unique(description: str, enum: list[str] | None = None) -> dict:
        items = {"type": "string", **({"enum": enum} if enum is not None else {})}
        return {"type": "array", "uniqueItems": True, "items": items, "description": description}

    datasets = registry.datasets
    filters = {
        "type": "object", "additionalProperties": False, "description": "What the tenant does not want to see.",
        "properties": {
            "dedup_items": {"type": "boolean", "default": True,
                            "description": "Keep only the newest event per item within a sequence."},
            "max_age_s": {**big, "type": ["integer", "null"], "description": "Drop events older than this."},
            "min_dwell_ms": {"type": "object", "additionalProperties": False,
                             "description": "Dataset -> drop its events with a shorter dwell; only datasets "
                                            "among the tenant's sequences.",
                             "properties": {ds: big for ds in datasets}},
            "surfaces": unique("Keep only these surfaces (empty: all)."),
            "exclude_items": unique("Never serve these items."),
        },
    }
    props: dict[str, Any] = {
        "sequences": {"type": "object", "minProperties": 1, "additionalProperties": False,
                      "description": "Dataset -> sequence length (at most the dataset's retention).",
                      "properties": {ds: {"type": "integer", "minimum": 1, "maximum": d.retention}
                                     for ds, d in datasets.items()}},
        "enrichments": unique("Registered enrichments to apply.", sorted(registry.enrichments)),
        "format": {"type": "string", "enum": list(FORMATS), "default": "json",
                   "description": "Default response format."},
        "description": {"type": "string"},
        "filters": filters,
        "views": unique("Aggregate views to serve with each user.", list(registry.views)),
        "max_concurrency": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 32,
                            "description": "Requests in flight before 429."},
        "max_rps": {"type": "number", "minimum": 0, "maximum": 1_000_000, "default": 0,
                    "description": "Requests per second per API process before 429 (0: no limit)."},
        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 60_000, "default": 100,
                       "description": "Per request, all users of a batch; 504 over it."},
        "log_sample_rate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0,
                            "description": "Share of responses logged to the served-features topic."},
    }
    if write:
        props["api_key"] = {"type": "string", "minLength": 1, "writeOnly": True,
                            "description": "The tenant's API key in plain text; only its sha256 is stored."}
        props["api_key_sha256"] = {"type": "string", "pattern": "^([0-9a-f]{64})?$", "writeOnly": True,
                                   "description": "Or the sha256 (hex) of the key. Neither: a new tenant has "
                                                  "no key (admin only), a changed one keeps its key."}
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if write:
        schema["required"] = ["sequences"]
        schema["examples"] = [_EXAMPLE]
    else:
        schema["required"] = sorted(props)
        filters["required"] = ["dedup_items", "min_dwell_ms", "surfaces", "exclude_items"]
    # min_dwell_ms may name only datasets among the tenant's sequences.
    schema["allOf"] = [
        {"if": {"required": ["filters"], "properties": {"filters": {
            "required": ["min_dwell_ms"], "properties": {"min_dwell_ms": {"required": [ds]}}}}},
         "then": {"properties": {"sequences": {"required": [ds]}}}}
        for ds in datasets]
    return schema


def document(spec: dict, registry: Registry) -> None:
    """Add the tenant config schemas of this process's registry, and use them."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["TenantConfigInput"] = tenant_config_schema(registry, write=True)
    schemas["TenantConfig"] = tenant_config_schema(registry, write=False)
    ref = {"$ref": "#/components/schemas/TenantConfig"}
    for name in ("TenantView", "TenantVersion"):
        if name in schemas:
            schemas[name]["properties"]["config"] = {**ref, "description": schemas[name]["properties"]["config"].get(
                "description", "The config; the key's hash is not shown.")}
