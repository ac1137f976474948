"""Operations: liveness (/healthz), readiness (/readyz: the KV layer answers; which worker
process answered) and Prometheus metrics (/metrics, summed over the worker processes; not in
the OpenAPI spec)."""
from __future__ import annotations

import os
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from serving.errors import ORJSONResponse

router = APIRouter(tags=["ops"], default_response_class=ORJSONResponse)


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    tenants: int = Field(..., description="Tenants this process serves.")
    worker_pid: int = Field(..., description="The API worker process that answered (USERSIGNALS_API_WORKERS).")


class NotReady(BaseModel):
    status: Literal["unavailable"]
    kv: str = Field(..., description="The error the KV layer answered with.")


@router.get("/healthz", summary="Liveness", response_model=None, responses={200: {"model": Health}})
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Ready to serve: the KV layer answers", response_model=None,
            responses={200: {"model": Ready},
                       503: {"model": NotReady, "description": "The KV layer does not answer.",
                             "content": {"application/json": {
                                 "example": {"status": "unavailable", "kv": "ConnectionError"}}}}})
async def readyz(request: Request):
    state = request.app.state
    try:
        await state.aclient.ping()
    except Exception as exc:
        return ORJSONResponse({"status": "unavailable", "kv": type(exc).__name__}, status_code=503)
    return {"status": "ready", "tenants": len(state.directory.all()), "worker_pid": os.getpid()}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request):
    state = request.app.state
    for name, cfg in state.directory.all().items():
        state.metrics.tenant_config_version.labels(name).set(cfg.version)
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)  # every worker's, summed
