"""Erasing a user (admin): DELETE /v1/admin/users/{user_id}.

The API deletes the user's KV state at once (every dataset's sequence, the aggregate state) and
records an erasure request (``usersignals.kv.ErasureRequests``); the ``user_erasure`` DAG
(``python -m batch delete-user --pending``) deletes the user's rows from every lake table and
writes the audit row. Why split: what the API serves is gone when the call returns, and the
lake's row-level deletes are Spark jobs over many tables (minutes, a catalog commit per table)
that belong in a retried, observed batch run, not in a request nor in the API's dependencies.
"""
from __future__ import annotations

import datetime as dt
import time
import uuid

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from usersignals import aggregates
from usersignals.kv import ErasureRequests, SequenceStore

from serving import auth
from serving.errors import ORJSONResponse, error_responses
from serving.routes import ID_RULE, USER_ID_SCHEMA, check_user_id

router = APIRouter(tags=["admin"], default_response_class=ORJSONResponse)

MAX_REQUESTER_CHARS = 200


class Erasure(BaseModel):
    user_id: str
    request_id: str = Field(..., description="Id of the erasure; the audit row in the lake's deletions table has it.")
    requested_by: str
    requested_at: str = Field(..., description="ISO 8601, UTC. The lake deletion removes what arrived up to then.")
    kv_removed: dict[str, int] = Field(..., description='Removed from the KV layer now: events per dataset '
                                       '("kv.<dataset>") and aggregate categories ("kv.aggregates").')
    lake: str = Field(..., description='"pending": the user_erasure DAG deletes the lake\'s rows and writes '
                      "the audit row.")


@router.delete("/v1/admin/users/{user_id}", summary="Erase a user (admin): KV state now, the lake by the next "
               "user_erasure run", status_code=202, response_model=None, dependencies=[Depends(auth.require_admin)],
               responses={202: {"model": Erasure}, **error_responses(
                   400, 401, 403, 503, notes={400: "user_id is not a valid id (the message says why), or requested_by is empty or "
                                    "too long."})})
async def erase_user(
    request: Request,
    user_id: str = Path(..., description=ID_RULE, examples=["u1"], json_schema_extra=USER_ID_SCHEMA),
    requested_by: str = Query("admin", description="Who asked (an operator, a ticket), for the audit row.",
                              min_length=1, max_length=MAX_REQUESTER_CHARS, examples=["ticket-4711"]),
):
    state = request.app.state
    check_user_id(user_id, "user_id")
    prefix = state.settings.kv_prefix
    # The registry at this moment: a reload may have added datasets since the app started.
    store = SequenceStore(None, state.registry, prefix)
    requested_at = dt.datetime.now(dt.timezone.utc)
    started = time.perf_counter()
    try:
        removed = await store.delete_user_async(state.aclient, user_id)
        removed["kv.aggregates"] = await aggregates.delete_user_async(state.aclient, prefix, user_id)
        erasure = {"request_id": uuid.uuid4().hex, "requested_by": requested_by,
                   "requested_at": requested_at.isoformat(),
                   "kv_deleted_at": dt.datetime.now(dt.timezone.utc).isoformat(), "kv_removed": removed}
        await ErasureRequests(prefix).record_async(state.aclient, user_id, erasure)
    except Exception as exc:  # the call is idempotent: the client retries
        state.metrics.kv_errors.inc()
        raise HTTPException(503, f"KV layer unavailable: {type(exc).__name__}") from None
    state.metrics.kv_latency.observe(time.perf_counter() - started)
    return {"user_id": user_id, "request_id": erasure["request_id"], "requested_by": requested_by,
            "requested_at": erasure["requested_at"], "kv_removed": removed, "lake": "pending"}
