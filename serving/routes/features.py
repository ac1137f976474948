"""POST /v1/features: sequences and views of a batch of users, for one tenant.

Order of checks: the tenant is a name (400) and exists (404), the key may read it (401/403),
the user ids and excluded items are valid ids (400, ``usersignals.ids``), the tenant is under
its limits (429, ``admit``); then the pipeline runs within the tenant's timeout (504).
"""
from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from usersignals import ids

from serving import auth, featurize
from serving.errors import MAX_BODY_BYTES, ORJSONResponse, error_body, error_responses, validation_message
from serving.limits import Slot, TenantLimits
from serving.metrics import ServingMetrics
from serving.routes import ITEM_ID_SCHEMA, TENANT_SCHEMA, USER_ID_SCHEMA, Event, check_ids
from serving.tenants import TenantConfig

MAX_USERS_PER_REQUEST = 100

router = APIRouter(tags=["features"], default_response_class=ORJSONResponse)


class FeaturesRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"tenant": "homefeed_ranking", "user_ids": ["u1", "u2"], "format": "json", "exclude_items": ["i42"]}]})

    tenant: str = Field(..., min_length=1, max_length=64, description="Registered tenant (use case).",
                        json_schema_extra={"pattern": TENANT_SCHEMA["pattern"]})
    user_ids: list[str] = Field(..., min_length=1, max_length=MAX_USERS_PER_REQUEST,
                                description=f"1 to {MAX_USERS_PER_REQUEST} user ids.",
                                json_schema_extra={"items": USER_ID_SCHEMA})
    format: Literal["json", "arrow"] | None = Field(
        None, description="json: events; arrow: model-ready arrays (an Arrow IPC stream with Accept: "
                          f"{featurize.ARROW_CONTENT_TYPE}, else JSON lists). Defaults to the tenant's format.")
    exclude_items: list[str] = Field(default_factory=list, max_length=1000,
                                     description="Items not to serve in this response (e.g. already shown).",
                                     json_schema_extra={"items": ITEM_ID_SCHEMA})


# What the 200 carries (documentation only: the route encodes its response itself).
class UserFeatures(BaseModel):
    user_id: str
    sequences: dict[str, list[Event]] = Field(..., description="Dataset -> events, newest first.")
    event_types: dict[str, str] = Field(..., description="Dataset -> its event type.")
    views: dict[str, Any] = Field(..., description="The tenant's aggregate views (empty if it has none).")


class FeaturesJSON(BaseModel):
    """format json: each user's sequences of events."""

    tenant: str
    config_version: int = Field(..., description="Version of the tenant's config that served the request.")
    request_id: str
    format: Literal["json"]
    users: list[UserFeatures]


class FeaturesArrays(BaseModel):
    """format arrow without the Arrow Accept: the model-ready arrays as JSON lists."""

    tenant: str
    config_version: int
    request_id: str
    format: Literal["arrow"]
    users: list[str] = Field(..., description="The user ids, in the order of the arrays' first axis.")
    views: list[dict[str, Any]]
    arrays: dict[str, list] = Field(..., description="'<dataset>.<field>' -> array [users, length(, dim)]; "
                                                     "the layout is in the API docs.")


_OK = {
    "description": "The users' features. JSON unless format is arrow and Accept names "
                   f"{featurize.ARROW_CONTENT_TYPE}: then one Arrow record batch (IPC stream), a row "
                   "per user, fixed-size list columns per dataset field, tenant, config version and "
                   "views in the schema metadata.",
    "model": FeaturesJSON | FeaturesArrays,
    "headers": {"x-request-id": {"description": "The request's id (the client's x-request-id if it sent one).",
                                 "required": True, "schema": {"type": "string"}}},
    "content": {
        "application/json": {"example": {
            "tenant": "homefeed_ranking", "config_version": 1, "request_id": "5f0c…", "format": "json",
            "users": [{"user_id": "u1", "event_types": {"clicks": "click"}, "views": {},
                       "sequences": {"clicks": [{"event_id": "e-981", "item_id": "i42", "ts": 1767225600000,
                                                 "dwell_ms": 5200, "features": {"category": "c1"}}]}}]}},
        featurize.ARROW_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
    },
}

_REQUEST_ID = {"parameters": [{
    "name": "x-request-id", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "An id of the client's for this request; echoed in the response (else one is made)."}]}


def admit(limits: TenantLimits, metrics: ServingMetrics, cfg: TenantConfig) -> Slot:
    """The tenant's limits (this worker's share of them, serving/limits.py): 429 when at its
    requests in flight or over its request rate (with Retry-After); otherwise the in-flight
    slot to hold while the request runs (``async with``)."""
    t = cfg.tenant
    refused = limits.acquire(t)
    if refused is not None:
        metrics.of_tenant(t.name).throttled.inc()
        wait = refused.retry_after_s
        raise HTTPException(429, refused.message,
                            headers={"Retry-After": str(max(1, math.ceil(wait)))} if wait else None)
    return Slot(limits, t)


@router.post("/v1/features", summary="Sequences and views of a batch of users, for one tenant",
             response_model=None, openapi_extra=_REQUEST_ID,
             responses={200: _OK, **error_responses(
                 400, 401, 403, 404, 413, 429, 503, 504,
                 notes={404: "Unknown tenant.", 401: "No key: send the tenant's key in X-API-Key (or the admin key).",
                        403: "The key is neither the tenant's nor the admin key."})})
async def features(req: FeaturesRequest, request: Request, keys: auth.Keys = Depends(auth.keys)) -> Response:
    content, media_type, request_id = await serve(request.app.state, req, keys, request.headers.get)
    return Response(content, media_type=media_type, headers={"x-request-id": request_id})


async def serve(state, req: FeaturesRequest, keys: auth.Keys, header) -> tuple[bytes, str, str]:
    """The route's work, for FastAPI's route and for ``asgi`` alike: (body, media type,
    request id), or an HTTPException. ``header(name)`` reads a request header."""
    metrics: ServingMetrics = state.metrics
    if not ids.is_name(req.tenant):
        raise HTTPException(400, ids.name_problem(req.tenant, "tenant"))
    cfg = state.directory.get(req.tenant)
    pipeline = state.pipeline  # with cfg, before any await: a registry reload does not change it mid-request
    if cfg is None:
        raise HTTPException(404, f"unknown tenant {req.tenant!r}")
    auth.authorize(cfg, keys)
    check_ids(req.user_ids, "user id")
    if req.exclude_items:
        check_ids(req.exclude_items, "excluded item id")
    t = cfg.tenant
    fmt = req.format or t.format
    tm = metrics.of_tenant(t.name)
    async with admit(state.limits, metrics, cfg):
        request_id = header("x-request-id") or os.urandom(16).hex()  # 128 random bits, as a uuid4 has
        started = time.perf_counter()
        tm.in_flight.inc()
        try:
            async with asyncio.timeout(t.timeout_ms / 1000):  # no task per request, unlike wait_for
                served = await pipeline.run(cfg, req.user_ids, fmt, header("accept") or "",
                                            req.exclude_items, request_id)
        except TimeoutError:
            tm.timeout.inc()
            raise HTTPException(504, f"tenant {t.name!r} request took over its {t.timeout_ms} ms timeout")
        except HTTPException:
            tm.error.inc()
            raise
        finally:
            tm.in_flight.dec()
    tm.ok.inc()
    tm.latency.observe(time.perf_counter() - started)
    body = served.body
    content = body if isinstance(body, bytes) else orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    tm.bytes_of(served.label).observe(len(content))
    return content, served.media_type, request_id


async def asgi(state, scope, receive, send) -> int:
    """POST /v1/features straight from the ASGI server, past FastAPI's routing, dependency
    solving and middleware (about half the API's CPU per request, measured by
    ``make bench-serving``): the same model validates the body, the same ``serve`` answers,
    and errors get the same bodies as through FastAPI. ``serving.app.ObservedApp`` sends this
    route's requests here; the FastAPI route above documents it and serves any other mount.
    Returns the status it answered (for the request metrics)."""
    headers = dict(scope["headers"])
    status, extra = 200, []
    try:
        if b"json" not in headers.get(b"content-type", b""):
            raise HTTPException(400, "send a JSON body with Content-Type: application/json")
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:  # a chunked body: no Content-Length said so up front
                raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        try:
            req = FeaturesRequest.model_validate_json(b"".join(chunks))
        except ValidationError as exc:
            raise HTTPException(400, validation_message(exc.errors())) from None
        keys = auth.Keys.of(headers.get(b"x-api-key"), headers.get(b"x-admin-key"), state.admin_sha256)
        content, media_type, request_id = await serve(
            state, req, keys, lambda name: (v.decode("latin-1") if (v := headers.get(name.encode())) else None))
        extra = [(b"x-request-id", request_id.encode())]
    except HTTPException as exc:
        status, media_type = exc.status_code, "application/json"
        content = orjson.dumps(error_body(exc.status_code, exc.detail))
        extra = [(k.lower().encode(), str(v).encode()) for k, v in (exc.headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media_type.encode()), (b"content-length", b"%d" % len(content)),
                            *extra]})
    await send({"type": "http.response.body", "body": content})
    return status
