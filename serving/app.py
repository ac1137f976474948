"""The read API over the KV layer.

``GET /v1/users/{user_id}/events?type=<event_type>&limit=<n>``: a dataset's events,
newest first, with their stored enrichment. ``GET /v1/datasets``, ``/healthz``,
``/metrics``. Run: ``.venv/bin/python -m serving`` (port ``USERSIGNALS_API_PORT``).
"""
from __future__ import annotations

import time

import orjson
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from usersignals.events import DEFAULT_LIMITS
from usersignals.kv import SequenceStore, connect
from usersignals.registry import Registry, load_registry
from usersignals.settings import Settings, load_settings

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class ORJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        return orjson.dumps(content)


class ServingMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("usersignals_api_requests_total", "API requests by route and status.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("usersignals_api_request_seconds", "API request latency by route.",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.kv_latency = Histogram("usersignals_api_kv_read_seconds", "KV read latency (one round trip).",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.kv_errors = Counter("usersignals_api_kv_errors_total", "KV reads that failed.", registry=r)
        self.events_returned = Counter("usersignals_api_events_returned_total", "Events returned.",
                                       ["dataset"], registry=r)


def create_app(settings: Settings | None = None, registry: Registry | None = None, client=None) -> FastAPI:
    settings = settings or load_settings()
    registry = registry or load_registry(settings.registry_path)
    client = client or connect(settings.kv_url, socket_timeout=2, socket_connect_timeout=2)
    store = SequenceStore(client, registry, settings.kv_prefix)
    metrics = ServingMetrics()
    app = FastAPI(title="usersignals", version="0.1.0", default_response_class=ORJSONResponse,
                  description="Real-time user sequences for recommender systems.")
    app.state.store = store
    app.state.metrics = metrics

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = route.path if route is not None else "unmatched"
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p not in ('query', 'path', 'body'))}: {e['msg']}"
            for e in exc.errors()
        )
        return ORJSONResponse({"error": "bad_request", "message": problems}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        code = {404: "not_found", 400: "bad_request", 503: "unavailable"}.get(exc.status_code, "error")
        return ORJSONResponse({"error": code, "message": exc.detail}, status_code=exc.status_code)

    @app.get("/v1/datasets", summary="Datasets: event type, retention N and stored enrichments")
    def datasets():
        return {"datasets": [
            {"name": d.name, "event_type": d.event_type, "retention": d.retention,
             "enrichments": list(d.enrichments), "ttl_days": d.ttl_days}
            for d in registry.datasets.values()
        ]}

    @app.get("/v1/users/{user_id}/events", summary="A user's latest events of one type, newest first")
    def user_events(
        user_id: str,
        type: str = Query(..., description="Event type, e.g. click, repin, closeup, view, search."),
        limit: int = Query(20, ge=1, description="How many events (at most the dataset's retention)."),
    ):
        if not user_id or len(user_id) > DEFAULT_LIMITS.max_id_chars:
            raise HTTPException(400, f"user_id must be 1..{DEFAULT_LIMITS.max_id_chars} characters")
        try:
            ds = registry.dataset_for_type(type)
        except KeyError:
            raise HTTPException(
                404, f"unknown event type {type!r}; known types: {sorted(registry.event_types)}") from None
        if limit > ds.retention:
            raise HTTPException(400, f"limit={limit} is over the retention of dataset {ds.name!r} ({ds.retention})")
        started = time.perf_counter()
        try:
            rows = store.read(user_id, {ds.name: limit})[ds.name]
        except Exception as exc:
            metrics.kv_errors.inc()
            raise HTTPException(503, f"KV layer unavailable: {type_name(exc)}") from None
        metrics.kv_latency.observe(time.perf_counter() - started)
        events = [orjson.loads(r) for r in rows]
        metrics.events_returned.labels(ds.name).inc(len(events))
        return {"user_id": user_id, "event_type": type, "dataset": ds.name, "events": events}

    @app.get("/healthz", summary="Liveness and KV reachability")
    def healthz():
        try:
            client.ping()
        except Exception as exc:
            return ORJSONResponse({"status": "unhealthy", "kv": type_name(exc)}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def type_name(exc: BaseException) -> str:
    return type(exc).__name__
