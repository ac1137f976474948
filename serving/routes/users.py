"""Raw reads: one user's latest events of a type (GET /v1/users/{user_id}/events: any registered
tenant's key, the read-only key or the admin key; serving.auth.require_reader) and the
registered datasets (GET /v1/datasets: no user data, no key)."""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from usersignals.registry import Registry

from serving import auth
from serving.errors import ORJSONResponse, error_responses
from serving.routes import MAX_ID_CHARS, USER_ID_SCHEMA, Event, check_user_id

router = APIRouter(tags=["users"], default_response_class=ORJSONResponse)

EVENTS_PATH = "/v1/users/{user_id}/events"


class UserEvents(BaseModel):
    user_id: str
    event_type: str
    dataset: str = Field(..., description="The dataset the events are read from.")
    events: list[Event] = Field(..., description="Newest first (empty for a user without events).")


class DatasetInfo(BaseModel):
    name: str
    event_type: str
    retention: int = Field(..., description="Events kept per user (the latest N).")
    enrichments: list[str] = Field(..., description="Enrichments stored with each event at indexing time.")
    ttl_days: int


class Datasets(BaseModel):
    datasets: list[DatasetInfo]


@router.get(EVENTS_PATH, summary="A user's latest events of one type, newest first",
            response_model=None, dependencies=[Depends(auth.require_reader)],
            responses={200: {"model": UserEvents}, **error_responses(
                400, 401, 403, 404, 503, notes={
                    400: "A parameter is malformed, or limit is over the largest retention of any dataset "
                         "(the maximum the spec states; limit over the type's own retention is not an error).",
                    401: "No key: send a tenant's key (X-API-Key), the read-only key (X-Read-Key) or the admin "
                         "key (X-Admin-Key).",
                    403: "The key is none of a registered tenant's, the read-only key or the admin key.",
                    404: "Unknown event type."})})
async def user_events(
    request: Request,
    user_id: str = Path(..., description=f"1 to {MAX_ID_CHARS} characters (the id rule of serving.routes).",
                        examples=["u1"], json_schema_extra=USER_ID_SCHEMA),
    type: str = Query(..., description="Event type, e.g. click, repin, closeup, view, search.", examples=["repin"]),
    limit: int = Query(20, ge=1, description="At most this many events. A dataset keeps its retention (the "
                                             "latest N, see /v1/datasets): a limit over the type's own retention "
                                             "gets at most N.", examples=[10]),
):
    state = request.app.state
    check_user_id(user_id, "user_id")
    try:
        ds = state.registry.dataset_for_type(type)
    except KeyError:
        raise HTTPException(
            404, f"unknown event type {type!r}; known types: {sorted(state.registry.event_types)}") from None
    largest = max_retention(state.registry)
    if limit > largest:
        raise HTTPException(400, f"limit={limit}: must be 1..{largest}, the largest retention of any dataset "
                                 f"({ds.name!r} keeps {ds.retention})")
    started = time.perf_counter()
    try:
        # One limit for every type, as the spec states it (OpenAPI has no rule across parameters):
        # a dataset serves at most the N it keeps, as a user with fewer events gets fewer.
        user = await state.retriever.one(user_id, {ds.name: min(limit, ds.retention)}, False, 0)
    except Exception as exc:
        state.metrics.kv_errors.inc()
        raise HTTPException(503, f"KV layer unavailable: {type_name(exc)}") from None
    state.metrics.kv_latency.observe(time.perf_counter() - started)
    return {"user_id": user_id, "event_type": type, "dataset": ds.name, "events": user.sequences[ds.name]}


@router.get("/v1/datasets", summary="Datasets: event type, retention N and stored enrichments",
            response_model=None, responses={200: {"model": Datasets}})
async def datasets(request: Request):
    return {"datasets": [
        {"name": d.name, "event_type": d.event_type, "retention": d.retention,
         "enrichments": list(d.enrichments), "ttl_days": d.ttl_days}
        for d in request.app.state.registry.datasets.values()
    ]}


def max_retention(registry: Registry) -> int:
    """limit's maximum: the largest retention of any dataset."""
    return max(d.retention for d in registry.datasets.values())


def document(spec: dict, registry: Registry) -> None:
    """What the registry fixes for this process: the event types (an enum) and the largest
    retention (limit's maximum; a type whose own retention is lower serves at most that)."""
    operation = spec["paths"][EVENTS_PATH]["get"]
    for param in operation["parameters"]:
        if param["name"] == "type":
            param["schema"]["enum"] = sorted(e for e in registry.event_types if registry.datasets_for(e))
        elif param["name"] == "limit":
            param["schema"]["maximum"] = max_retention(registry)


def type_name(exc: BaseException) -> str:
    return type(exc).__name__
