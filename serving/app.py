"""The serving API: user sequences for recommenders, per tenant.

``POST /v1/features`` runs retrieve → filter → enrich → size → featurize for a batch of
users of one tenant (its API key in ``X-API-Key``). ``GET /v1/users/{user_id}/events``
reads one dataset raw. Tenants are listed, changed and versioned at runtime through
``/v1/tenants`` (admin key in ``X-Admin-Key``). Run: ``.venv/bin/python -m serving``.
"""
from __future__ import annotations

import asyncio
import math
import os
from contextlib import asynccontextmanager
import time
import uuid
from typing import Literal

import orjson
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from usersignals.aggregates import compute_views
from usersignals.events import DEFAULT_LIMITS
from usersignals.features import CachedFeatures
from usersignals.registry import Registry, RegistryError, load_registry, tenant_to_dict
from usersignals.settings import Settings, load_settings

from serving import enrich as enrich_stage
from serving import featurize, filtering, size
from serving.feature_log import FeatureLogger
from serving.metrics import ServingMetrics
from serving.retrieve import Retriever
from serving.tenants import TenantConfig, TenantDirectory, key_matches, sha256_hex

MAX_USERS_PER_REQUEST = 100
MAX_BODY_BYTES = 64 * 1024


class ORJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class FeaturesRequest(BaseModel):
    tenant: str = Field(..., min_length=1, max_length=64, description="Registered tenant (use case).")
    user_ids: list[str] = Field(..., min_length=1, max_length=MAX_USERS_PER_REQUEST,
                                description=f"1 to {MAX_USERS_PER_REQUEST} user ids.")
    format: Literal["json", "ufr"] | None = Field(
        None, description="json: events; ufr: model-ready arrays (binary with Accept: "
                          f"{featurize.UFR_CONTENT_TYPE}). Defaults to the tenant's format.")
    exclude_items: list[str] = Field(default_factory=list, max_length=1000,
                                     description="Items not to serve in this response (e.g. already shown).")


def create_app(settings: Settings | None = None, registry: Registry | None = None,
               aclient=None, feature_logger: FeatureLogger | None = None) -> "ObservedApp":
    import redis.asyncio as aioredis

    settings = settings or load_settings()
    registry = registry or load_registry(settings.registry_path)
    if aclient is None:
        # Blocking pool: a 100-user batch waits for a free connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(settings.kv_url, max_connections=64, timeout=2,
                                                        socket_timeout=2, socket_connect_timeout=2)
        aclient = aioredis.Redis(connection_pool=pool)
    metrics = ServingMetrics()
    directory = TenantDirectory(registry, aclient, settings.kv_prefix)
    retriever = Retriever(aclient, registry, settings.kv_prefix)
    enricher = enrich_stage.Enricher(aclient, registry, settings.kv_prefix, CachedFeatures(None, ttl_s=60))
    if feature_logger is None:
        feature_logger = FeatureLogger(
            settings.broker, settings.served_topic,
            on_drop=lambda n: metrics.feature_log.labels("dropped").inc(n),
            on_sent=lambda n: metrics.feature_log.labels("sent").inc(n))
    admin_sha = sha256_hex(os.environ.get("USERSIGNALS_ADMIN_KEY", "admin-dev-key"))

    @asynccontextmanager
    async def lifespan(_app):
        try:
            await directory.sync()
        except Exception:
            pass  # KV not reachable yet: /readyz says so, and the sync loop catches up
        task = asyncio.create_task(directory.run_sync(1.0))
        yield
        task.cancel()
        feature_logger.close(2)

    app = FastAPI(title="usersignals", version="0.2.0", default_response_class=ORJSONResponse,
                  description="Real-time user sequences for recommender systems.", lifespan=lifespan)
    app.state.directory = directory
    app.state.metrics = metrics
    app.state.feature_logger = feature_logger
    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        if "json" not in request.headers.get("content-type", "") and request.method in ("POST", "PUT"):
            return ORJSONResponse({"error": "bad_request", "message": "send a JSON body with "
                                   "Content-Type: application/json"}, status_code=400)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p not in ('query', 'path', 'body'))}: {e['msg']}"
            for e in exc.errors()
        )
        return ORJSONResponse({"error": "bad_request", "message": problems or "invalid request"}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large",
                429: "too_many_requests", 503: "unavailable", 504: "timeout"}.get(exc.status_code, "error")
        return ORJSONResponse({"error": code, "message": exc.detail}, status_code=exc.status_code,
                              headers=getattr(exc, "headers", None))

    def is_admin(key: str | None) -> bool:
        return key_matches(key, admin_sha)

    def authorize(cfg: TenantConfig, api_key: str | None, admin_key: str | None) -> None:
        if is_admin(admin_key) or key_matches(api_key, cfg.tenant.api_key_sha256):
            return
        if not api_key and not admin_key:
            raise HTTPException(401, "missing API key: send the tenant's key in X-API-Key")
        raise HTTPException(403, f"this key is not allowed to read tenant {cfg.tenant.name!r}")

    def require_admin(admin_key: str | None) -> None:
        if not admin_key:
            raise HTTPException(401, "missing admin key: send it in X-Admin-Key")
        if not is_admin(admin_key):
            raise HTTPException(403, "wrong admin key")

    async def run_pipeline(cfg: TenantConfig, user_ids: list[str], fmt: str, binary: bool,
                           exclude_items: list[str], request_id: str):
        t = cfg.tenant
        name = t.name
        now_ms = int(time.time() * 1000)
        stage = metrics.stage_latency
        t0 = time.perf_counter()
        # Events are parsed only when a stage has to look inside them.
        parse = fmt != "json" or filtering.has_filters(t) or bool(exclude_items) or bool(enricher.fields(t))
        try:
            users = await retriever.many(user_ids, t, registry, now_ms, parse)
        except Exception as exc:
            metrics.kv_errors.inc()
            raise HTTPException(503, f"KV layer unavailable: {type(exc).__name__}") from None
        t1 = time.perf_counter()
        metrics.kv_latency.observe((t1 - t0) / max(1, len(user_ids)))
        stage.labels(name, "retrieve").observe(t1 - t0)
        if parse:
            for chunk in range(0, len(users), 10):
                # CPU stages run in slices so one large batch does not hold the event loop for long.
                filtering.apply(users[chunk:chunk + 10], t, now_ms, exclude_items)
                if len(users) > 10:
                    await asyncio.sleep(0)
        t2 = time.perf_counter()
        stage.labels(name, "filter").observe(t2 - t1)
        missing = await enricher.apply(users, t) if parse else 0
        if missing:
            metrics.missing_features.labels(name).inc(missing)
        t3 = time.perf_counter()
        stage.labels(name, "enrich").observe(t3 - t2)
        if parse:
            size.apply(users, t)
        if t.views:
            for u in users:
                u.views = compute_views(t.views, u.state)
        t4 = time.perf_counter()
        stage.labels(name, "size").observe(t4 - t3)
        meta = {"tenant": name, "config_version": cfg.version, "request_id": request_id, "format": fmt}
        log = feature_logger.sampled(t.log_sample_rate)
        if fmt == "json":
            per_user = featurize.to_json(users, registry)
            body: object = {**meta, "users": per_user}
            logged = [(u["user_id"], u) for u in per_user] if log else None
        else:
            arrays = featurize.to_arrays(users, t, registry, now_ms)
            meta["users"] = user_ids
            meta["views"] = [u.views for u in users]
            if binary:
                body = featurize.encode_ufr(arrays, meta)
            else:
                body = {**meta, "arrays": featurize.arrays_to_json(arrays)}
            logged = ([(u, {n: a[i] for n, a in arrays.items()} | {"views": users[i].views})
                       for i, u in enumerate(user_ids)] if log else None)
        t5 = time.perf_counter()
        stage.labels(name, "featurize").observe(t5 - t4)
        if parse:
            metrics.events_served.labels(name).inc(sum(len(e) for u in users for e in u.sequences.values()))
        if logged:
            feature_logger.log(request_id, name, cfg.version, fmt, logged)
        return body

    @app.post("/v1/features", summary="Sequences and views of a batch of users, for one tenant",
              responses={200: {"content": {featurize.UFR_CONTENT_TYPE: {}}}})
    async def features(req: FeaturesRequest, request: Request,
                       x_api_key: str | None = Header(None), x_admin_key: str | None = Header(None)):
        cfg = directory.get(req.tenant)
        if cfg is None:
            raise HTTPException(404, f"unknown tenant {req.tenant!r}")
        authorize(cfg, x_api_key, x_admin_key)
        for u in req.user_ids:
            check_user_id(u, "user ids")
        t = cfg.tenant
        fmt = req.format or t.format
        binary = fmt == "ufr" and featurize.UFR_CONTENT_TYPE in request.headers.get("accept", "")
        bucket = directory.bucket(cfg)
        wait = bucket.take() if bucket is not None else 0.0
        if wait:
            metrics.tenant_requests.labels(t.name, "throttled").inc()
            raise HTTPException(429, f"tenant {t.name!r} is over its rate of {t.max_rps:g} requests/s; "
                                     f"retry in {wait:.2f}s", headers={"Retry-After": str(max(1, math.ceil(wait)))})
        sem = directory.semaphore(cfg)
        if sem.locked():
            metrics.tenant_requests.labels(t.name, "throttled").inc()
            raise HTTPException(429, f"tenant {t.name!r} is at its limit of {t.max_concurrency} "
                                     "requests in flight; retry shortly")
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        started = time.perf_counter()
        gauge = metrics.in_flight.labels(t.name)
        async with sem:
            gauge.inc()
            try:
                body = await asyncio.wait_for(
                    run_pipeline(cfg, req.user_ids, fmt, binary, req.exclude_items, request_id),
                    t.timeout_ms / 1000)
            except asyncio.TimeoutError:
                metrics.tenant_requests.labels(t.name, "timeout").inc()
                raise HTTPException(504, f"tenant {t.name!r} request took over its {t.timeout_ms} ms timeout")
            except HTTPException:
                metrics.tenant_requests.labels(t.name, "error").inc()
                raise
            finally:
                gauge.dec()
        metrics.tenant_requests.labels(t.name, "ok").inc()
        metrics.tenant_latency.labels(t.name).observe(time.perf_counter() - started)
        if isinstance(body, bytes):
            metrics.response_bytes.labels(t.name, "ufr_binary").observe(len(body))
            return Response(body, media_type=featurize.UFR_CONTENT_TYPE, headers={"x-request-id": request_id})
        content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        metrics.response_bytes.labels(t.name, fmt).observe(len(content))
        return Response(content, media_type="application/json", headers={"x-request-id": request_id})

    @app.get("/v1/users/{user_id}/events", summary="A user's latest events of one type, newest first")
    async def user_events(
        user_id: str,
        type: str = Query(..., description="Event type, e.g. click, repin, closeup, view, search."),
        limit: int = Query(20, ge=1, description="How many events (at most the dataset's retention)."),
    ):
        check_user_id(user_id, "user_id")
        try:
            ds = registry.dataset_for_type(type)
        except KeyError:
            raise HTTPException(
                404, f"unknown event type {type!r}; known types: {sorted(registry.event_types)}") from None
        if limit > ds.retention:
            raise HTTPException(400, f"limit={limit} is over the retention of dataset {ds.name!r} ({ds.retention})")
        started = time.perf_counter()
        try:
            user = await retriever.one(user_id, {ds.name: limit}, False, 0)
        except Exception as exc:
            metrics.kv_errors.inc()
            raise HTTPException(503, f"KV layer unavailable: {type_name(exc)}") from None
        metrics.kv_latency.observe(time.perf_counter() - started)
        return {"user_id": user_id, "event_type": type, "dataset": ds.name, "events": user.sequences[ds.name]}

    @app.get("/v1/datasets", summary="Datasets: event type, retention N and stored enrichments")
    async def datasets():
        return {"datasets": [
            {"name": d.name, "event_type": d.event_type, "retention": d.retention,
             "enrichments": list(d.enrichments), "ttl_days": d.ttl_days}
            for d in registry.datasets.values()
        ]}

    def tenant_view(cfg: TenantConfig) -> dict:
        body = tenant_to_dict(cfg.tenant)
        body.pop("api_key_sha256", None)
        return {"name": cfg.tenant.name, "version": cfg.version, "updated_at": cfg.updated_at, "config": body}

    @app.get("/v1/tenants", summary="Tenants and their current config versions")
    async def tenants(x_api_key: str | None = Header(None), x_admin_key: str | None = Header(None)):
        if is_admin(x_admin_key):
            visible = directory.all().values()
        else:
            visible = [c for c in directory.all().values() if key_matches(x_api_key, c.tenant.api_key_sha256)]
            if not visible:
                raise HTTPException(401 if not x_api_key else 403, "send a tenant key (X-API-Key) or the admin key")
        return {"tenants": [tenant_view(c) for c in visible]}

    @app.put("/v1/tenants/{name}", summary="Create or change a tenant (admin); applied without restart")
    async def put_tenant(name: str, request: Request, x_admin_key: str | None = Header(None)):
        require_admin(x_admin_key)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, f"body is not JSON: {exc}") from None
        if isinstance(body, dict) and "api_key" in body:  # accept a plain key, store only its hash
            body = dict(body)
            body["api_key_sha256"] = sha256_hex(str(body.pop("api_key")))
        elif isinstance(body, dict) and "api_key_sha256" not in body and directory.get(name):
            body = {**body, "api_key_sha256": directory.get(name).tenant.api_key_sha256}
        try:
            cfg = await directory.put(name, body)
        except RegistryError as exc:
            raise HTTPException(400, str(exc)) from None
        metrics.tenant_config_version.labels(name).set(cfg.version)
        return tenant_view(cfg)

    @app.get("/v1/tenants/{name}/versions", summary="A tenant's config history, newest first (admin)")
    async def tenant_versions(name: str, x_admin_key: str | None = Header(None)):
        require_admin(x_admin_key)
        if directory.get(name) is None:
            raise HTTPException(404, f"unknown tenant {name!r}")
        history = await directory.history(name)
        for h in history:
            h["config"].pop("api_key_sha256", None)
        return {"name": name, "versions": history}

    @app.post("/v1/admin/reload", summary="Re-read the registry file and apply changed tenants (admin)")
    async def reload(x_admin_key: str | None = Header(None)):
        require_admin(x_admin_key)
        try:
            fresh = load_registry(settings.registry_path)
        except RegistryError as exc:
            raise HTTPException(400, str(exc)) from None
        changed = []
        for name, tenant in fresh.tenants.items():
            current = directory.get(name)
            if current is None or current.tenant != tenant:
                await directory.put(name, tenant_to_dict(tenant))
                changed.append(name)
        return {"changed": changed}

    @app.get("/healthz", summary="Liveness")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready to serve: the KV layer answers")
    async def readyz():
        try:
            await aclient.ping()
        except Exception as exc:
            return ORJSONResponse({"status": "unavailable", "kv": type_name(exc)}, status_code=503)
        return {"status": "ready", "tenants": len(directory.all())}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        for name, cfg in directory.all().items():
            metrics.tenant_config_version.labels(name).set(cfg.version)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return ObservedApp(app, metrics)


class ObservedApp:
    """Pure ASGI wrapper: request metrics and the body-size limit, without the cost of
    Starlette's BaseHTTPMiddleware (a task group per request)."""

    def __init__(self, app: FastAPI, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics
        self.state = app.state

    def __getattr__(self, name):  # routes, openapi, dependency overrides...
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY_BYTES):
                body = orjson.dumps({"error": "too_large", "message": f"request body over {MAX_BODY_BYTES} bytes"})
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                self._observe(scope, 413, started)
                return

        async def send_observed(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self._observe(scope, status[0], started)

    def _observe(self, scope, status: int, started: float) -> None:
        route = scope.get("route")
        path = route.path if route is not None else "unmatched"
        self.metrics.latency.labels(path).observe(time.perf_counter() - started)
        self.metrics.requests.labels(path, str(status)).inc()


def check_user_id(user_id: str, what: str) -> None:
    if not user_id or len(user_id) > DEFAULT_LIMITS.max_id_chars:
        raise HTTPException(400, f"{what} must be 1..{DEFAULT_LIMITS.max_id_chars} characters")


def type_name(exc: BaseException) -> str:
    return type(exc).__name__
