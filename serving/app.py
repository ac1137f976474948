"""The serving API: user sequences for recommenders, per tenant.

``POST /v1/features`` runs retrieve → filter → enrich → size → featurize for a batch of
users of one tenant (its API key in ``X-API-Key``). ``GET /v1/users/{user_id}/events``
reads one dataset raw (a tenant's key, the read key or the admin key). Tenants are listed,
changed and versioned at runtime through ``/v1/tenants`` (admin key in ``X-Admin-Key``);
``POST /v1/admin/reload`` re-reads the registry file (datasets, enrichments, views, tenants)
without a restart (``apply_registry``). Run: ``.venv/bin/python -m serving``.

With ``api_admin_port`` set, the routes only the admin key may call are served on that port
alone, by a second FastAPI app sharing this one's state; ``ObservedApp`` picks the app by the
port a request came in on (serving/__main__.py listens on both).

This module wires the parts: the routes (``serving.routes``), the key checks
(``serving.auth``), the feature pipeline (``serving.pipeline``), the error body and its
handlers (``serving.errors``); ``ObservedApp`` adds request metrics and the body-size limit.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI

from usersignals.features import CachedFeatures
from usersignals.registry import Registry, RegistryError, load_registry
from usersignals.settings import Settings, load_settings

from serving import auth, errors, kv_client
from serving.background import REGISTRY_FOLLOW, STARTUP, LoopErrors, every
from serving.enrich import Enricher
from serving.errors import MAX_BODY_BYTES, ORJSONResponse
from serving.feature_log import FeatureLogger
from serving.kv_client import as_kv
from serving.limits import TenantLimits
from serving.metrics import ServingMetrics, multiprocess_dir
from serving.pipeline import Pipeline
from serving.retrieve import Retriever
from serving.routes import admin, features, ops, tenants, users
from serving.tenants import TenantDirectory

MAX_USERS_PER_REQUEST = features.MAX_USERS_PER_REQUEST


def create_app(settings: Settings | None = None, registry: Registry | None = None,
               aclient=None, feature_logger: FeatureLogger | None = None) -> "ObservedApp":
    settings = settings or load_settings()
    registry = registry or load_registry(settings.registry_path)
    if aclient is None:
        aclient, hot = kv_client.connect(settings)   # single node or cluster, as settings say
    else:
        hot = as_kv(aclient)  # a client of the caller's (tests) for everything
    metrics = ServingMetrics()
    loop_errors = LoopErrors(metrics.background_errors)
    directory = TenantDirectory(registry, aclient, settings.kv_prefix, loop_errors)
    retriever = Retriever(hot, registry, settings.kv_prefix)
    features_cache = CachedFeatures(None, ttl_s=60)  # item features, kept across registry reloads
    enricher = Enricher(hot, registry, settings.kv_prefix, features_cache)
    if feature_logger is None:
        feature_logger = FeatureLogger(
            settings.broker, settings.served_topic,
            on_drop=lambda n: metrics.feature_log.labels("dropped").inc(n),
            on_sent=lambda n: metrics.feature_log.labels("sent").inc(n))

    @asynccontextmanager
    async def lifespan(_app):
        try:
            await directory.sync()
            await retriever.warm()  # a cold first request (connect, NOSCRIPT) can miss a tenant's timeout
            await enricher.embedding_version()
        except Exception as exc:  # noqa: BLE001 - KV not reachable yet: /readyz says so, the loops catch up
            loop_errors.failed(STARTUP, exc, "reading tenants and warming the KV client")
        task = asyncio.create_task(directory.run_sync(1.0))
        follower = asyncio.create_task(follow_registry(app, 1.0))
        flusher = asyncio.create_task(metrics.run_flush(1.0, loop_errors))  # batched histograms (serving/metrics.py)
        yield
        task.cancel()
        follower.cancel()
        flusher.cancel()
        hot.close()
        feature_logger.close(2)
        metrics.worker_exit()

    app = FastAPI(title="usersignals", version="0.2.0", default_response_class=ORJSONResponse,
                  description="Real-time user sequences for recommender systems. Errors answer "
                              '`{"error", "message"}` (the `Error` schema).', lifespan=lifespan)
    state = app.state
    state.settings = settings
    state.registry = registry
    state.aclient = aclient
    state.directory = directory
    # python -m serving with api_workers > 1 runs this app in each of N processes (their metrics
    # shared through a directory): each holds 1/N of every tenant's limits.
    state.limits = TenantLimits(settings.api_workers if multiprocess_dir() else 1)
    state.retriever = retriever
    state.hot = hot
    state.features_cache = features_cache
    state.metrics = metrics
    state.loop_errors = loop_errors
    state.feature_logger = feature_logger
    state.pipeline = Pipeline(registry, retriever, enricher, metrics, feature_logger)
    state.admin_sha256 = auth.admin_key_sha256(settings)
    state.read_sha256 = auth.read_key_sha256(settings)
    errors.install(app)
    admin_port = admin_port_of(settings)
    routes = [r for module in (features, users, tenants, admin, ops) for r in module.router.routes]
    admin_app = None
    if admin_port:
        admin_app = FastAPI(title="usersignals admin", version="0.2.0", default_response_class=ORJSONResponse,
                            description=f"The admin routes of usersignals (port {admin_port}); the others are "
                                        f"on port {settings.api_port}.")
        admin_app.state = state  # one state: what a route changes here, the public app serves
        errors.install(admin_app)
        add_routes(admin_app, [*tenants.router.routes, *admin.router.routes, *ops.router.routes])
        add_routes(app, [r for r in routes if not admin_only(r)])
    else:
        add_routes(app, routes)
    state.apps = [a for a in (app, admin_app) if a is not None]
    for a in state.apps:
        install_openapi(a)
    fast = {("POST", "/v1/features"): (features.asgi, route_of(app, "/v1/features"))}
    return ObservedApp(app, metrics, fast, admin_app, admin_port)


def admin_port_of(settings: Settings) -> int:
    """The port of the admin routes when they have their own (``api_admin_port``), else 0."""
    if settings.api_admin_port and settings.api_admin_port == settings.api_port:
        raise ValueError(f"USERSIGNALS_API_ADMIN_PORT is {settings.api_admin_port}, the API's own port: "
                         "set another port, or 0 to serve the admin routes on the API's port")
    return settings.api_admin_port


def admin_only(route) -> bool:
    """A route only the admin key may call (it depends on ``auth.require_admin``)."""
    return any(d.dependency is auth.require_admin for d in getattr(route, "dependencies", ()))


def install_openapi(app: FastAPI) -> None:
    """The app's spec, with what the registry served now fixes (reloads reset the cache)."""
    state = app.state

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = FastAPI.openapi(app)  # caches it in app.openapi_schema
            errors.drop_422(spec)
            if users.EVENTS_PATH in spec["paths"]:
                users.document(spec, state.registry)
            tenants.document(spec, state.registry)
        return app.openapi_schema

    app.openapi = openapi


def apply_registry(app: FastAPI, registry: Registry) -> None:
    """Serve ``registry`` from now on: its datasets, enrichments, views and embedding size, and
    tenant changes validated against it. The stages are rebuilt and swapped in one synchronous
    step (no await: no request runs in between); a request in flight keeps the pipeline, and so
    the registry, it took when it started."""
    state = app.state
    prefix = state.settings.kv_prefix
    if registry.model.embedding_dim != state.registry.model.embedding_dim:
        # The cache holds float32 bytes of the old size: the new stages start a cache of their own.
        state.features_cache = CachedFeatures(None, ttl_s=60)
    retriever = Retriever(state.hot, registry, prefix)
    enricher = Enricher(state.hot, registry, prefix, state.features_cache)
    state.pipeline = Pipeline(registry, retriever, enricher, state.metrics, state.feature_logger)
    state.retriever = retriever
    state.registry = registry
    state.directory.registry = registry
    for served in getattr(state, "apps", [app]):
        served.openapi_schema = None  # its enums (event types, datasets) come from the registry


def registry_key(state) -> str:
    """Where a reload records the digest of the registry file it applied (the tenants' slot)."""
    return state.directory.key + ":registry"


async def follow_registry(app: FastAPI, interval_s: float = 1.0) -> None:
    """With several API processes (``api_workers``) a reload reaches one of them, which records
    the file's digest in the KV layer; every other process re-reads the file when the recorded
    digest is not the one it serves, and applies it if the file still has that digest (a file
    edited since, but not reloaded, waits for its own reload). A process whose registry was not
    loaded from a file (tests) does not follow."""
    state = app.state

    async def step():
        recorded = await state.aclient.get(registry_key(state))
        recorded = recorded.decode() if isinstance(recorded, bytes) else recorded
        if recorded and state.registry.digest and recorded != state.registry.digest:
            try:
                fresh = load_registry(state.settings.registry_path)
            except RegistryError as exc:  # the file mid-edit, or edited since: keep serving the registry we have
                raise RegistryError(f"the recorded registry {recorded[:12]} was not applied: {exc}") from None
            if fresh.digest == recorded:
                apply_registry(app, fresh)

    await every(interval_s, REGISTRY_FOLLOW, step, state.loop_errors)


def route_of(app: FastAPI, path: str):
    return next(r for r in app.router.routes if getattr(r, "path", None) == path)


def add_routes(app: FastAPI, routes: list) -> None:
    """Routers' routes, added to the app itself. Not ``include_router``: FastAPI 0.165
    dispatches a request to an included router by matching the router's routes a second time,
    which cost ~25 µs of CPU a request here, and this API is measured in CPU per request. So the
    routers set what an include would (``default_response_class``); app.dependency_overrides do
    not reach these routes."""
    app.router.routes.extend(routes)


class ObservedApp:
    """Pure ASGI wrapper: request metrics and the body-size limit, without the cost of
    Starlette's BaseHTTPMiddleware (a task group per request)."""

    def __init__(self, app: FastAPI, metrics: ServingMetrics, fast: dict | None = None,
                 admin: FastAPI | None = None, admin_port: int = 0):
        self.app = app
        self.metrics = metrics
        self.state = app.state
        # (method, path) -> (ASGI handler(state, scope, receive, send) -> status, the route it
        # serves): hot routes answered without FastAPI's per-request machinery.
        self.fast = fast or {}
        # Requests to this port (the server's own, as the connection says) go to ``admin``.
        self.admin, self.admin_port = admin, admin_port

    def __getattr__(self, name):  # routes, openapi, dependency overrides...
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY_BYTES):
                body = orjson.dumps(errors.error_body(413, f"request body over {MAX_BODY_BYTES} bytes"))
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                self._observe(scope, 413, started)
                return

        app = self.app
        if self.admin_port and (scope.get("server") or (None, None))[1] == self.admin_port:
            app, handler = self.admin, None
        else:
            handler = self.fast.get((scope["method"], scope["path"]))
        if handler is not None:  # it returns its status: no wrapper around send
            scope["route"] = handler[1]
            try:
                status[0] = await handler[0](self.state, scope, receive, send)
            finally:
                self._observe(scope, status[0], started)
            return

        async def send_observed(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_observed)
        finally:
            self._observe(scope, status[0], started)

    def _observe(self, scope, status: int, started: float) -> None:
        route = scope.get("route")
        self.metrics.observe_request(route.path if route is not None else "unmatched", status,
                                     time.perf_counter() - started)
