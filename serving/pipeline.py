"""The feature pipeline of ``POST /v1/features``: retrieve → filter → enrich → size → featurize.

One ``Pipeline`` per app. ``run`` takes a tenant's config (the version the request started
with) and a batch of users, times each stage (``usersignals_api_stage_seconds``) and returns
what to send: a JSON body (encoded by the route) or already-encoded bytes, with its media type.
Events are parsed only when a stage has to look inside them; otherwise the KV layer's JSON
is passed through as it is. Model-ready formats never decode events into dicts: the filter
stage reads the stored JSON into the columns the arrays need (``serving.columns``, with the
native hot path).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from fastapi import HTTPException

from usersignals.aggregates import compute_views
from usersignals.registry import Registry, Tenant

from serving import featurize, filtering, size
from serving.enrich import Enricher
from serving.feature_log import FeatureLogger
from serving.metrics import ServingMetrics
from serving.model import UserSequences
from serving.retrieve import Retriever
from serving.tenants import TenantConfig

SLICE = 10  # users per slice of a CPU stage, between which the event loop gets a turn


@dataclass(slots=True)
class Served:
    body: bytes | dict  # bytes: encoded already (binary formats); dict: JSON, encoded by the route
    media_type: str
    label: str          # the format label of usersignals_api_response_bytes


class Pipeline:
    def __init__(self, registry: Registry, retriever: Retriever, enricher: Enricher, metrics: ServingMetrics,
                 feature_logger: FeatureLogger):
        self.registry = registry
        self.retriever = retriever
        self.enricher = enricher
        self.metrics = metrics
        self.feature_logger = feature_logger

    async def run(self, cfg: TenantConfig, user_ids: list[str], fmt: str, accept: str,
                  exclude_items: list[str], request_id: str) -> Served:
        t = cfg.tenant
        tm = self.metrics.of_tenant(t.name)
        stage = tm.stages
        now_ms = int(time.time() * 1000)
        columnar = fmt != "json"  # model-ready arrays: sequences read into columns, never into dicts
        parse = self.needs_parsing(t, fmt, exclude_items)
        t0 = time.perf_counter()
        users = await self.retrieve(t, user_ids, now_ms, parse and not columnar)
        t1 = time.perf_counter()
        stage["retrieve"].observe(t1 - t0)
        items = None
        if parse:  # stages that look inside events; a pass-through request skips (and does not time) them
            await self.filter(users, t, now_ms, exclude_items, columnar)
            t2 = time.perf_counter()
            stage["filter"].observe(t2 - t1)
            items = await self.enrich(users, t, attach=fmt == "json")
            t3 = time.perf_counter()
            stage["enrich"].observe(t3 - t2)
            t1 = t3
        self.size(users, t, parse)
        t4 = time.perf_counter()
        if parse or t.views:
            stage["size"].observe(t4 - t1)
        served, logged = self.featurize(cfg, users, user_ids, fmt, accept, now_ms, request_id, items)
        stage["featurize"].observe(time.perf_counter() - t4)
        if parse:
            tm.events_served.inc(sum(len(e) for u in users for e in u.sequences.values()))
        if logged:
            self.feature_logger.log(request_id, t.name, cfg.version, fmt, logged, self.enricher.served_version(t))
        return served

    def needs_parsing(self, t: Tenant, fmt: str, exclude_items: list[str]) -> bool:
        """Whether any stage looks inside the events (else they pass through as stored JSON);
        model-ready formats always do (``run`` reads them into columns instead of dicts)."""
        return fmt != "json" or filtering.has_filters(t) or bool(exclude_items) or bool(self.enricher.fields(t))

    async def retrieve(self, t: Tenant, user_ids: list[str], now_ms: int, parse: bool) -> list[UserSequences]:
        """Stage 1: each user's sequences (and aggregate state) in one KV round trip; 503 if the KV fails."""
        started = time.perf_counter()
        try:
            users = await self.retriever.many(user_ids, t, self.registry, now_ms, parse)
        except Exception as exc:
            self.metrics.kv_errors.inc()
            raise HTTPException(503, f"KV layer unavailable: {type(exc).__name__}") from None
        self.metrics.kv_read.observe((time.perf_counter() - started) / max(1, len(user_ids)))
        return users

    async def filter(self, users: list[UserSequences], t: Tenant, now_ms: int, exclude_items: list[str],
                     columnar: bool = False) -> None:
        """Stage 2: the tenant's filters and the request's exclusions, in slices so one large
        batch does not hold the event loop for long. ``columnar``: the sequences are still the
        KV layer's JSON and are read into ``Columns`` as they are filtered."""
        apply = filtering.apply_columns if columnar else filtering.apply
        for chunk in range(0, len(users), SLICE):
            apply(users[chunk:chunk + SLICE], t, now_ms, exclude_items)
            if len(users) > SLICE:
                await asyncio.sleep(0)

    async def enrich(self, users: list[UserSequences], t: Tenant, attach: bool = True) -> dict:
        """Stage 3: serving-time item features; events whose item has none are counted.
        Returns the items' features, which featurize joins in bulk."""
        missing, items = await self.enricher.apply(users, t, attach)
        if missing:
            self.metrics.of_tenant(t.name).missing_features.inc(missing)
        return items

    def size(self, users: list[UserSequences], t: Tenant, parse: bool) -> None:
        """Stage 4: each sequence cut to the tenant's length; the tenant's aggregate views."""
        if parse:
            size.apply(users, t)
        if t.views:
            for u in users:
                u.views = compute_views(t.views, u.state)

    def featurize(self, cfg: TenantConfig, users: list[UserSequences], user_ids: list[str], fmt: str,
                  accept: str, now_ms: int, request_id: str, items: dict | None = None) -> tuple[Served, list | None]:
        """Stage 5: the response in the asked format, and what of it to send to the
        served-features log (None unless this request is in the tenant's sample)."""
        t = cfg.tenant
        meta = {"tenant": t.name, "config_version": cfg.version, "request_id": request_id, "format": fmt}
        log = self.feature_logger.sampled(t.log_sample_rate)
        if fmt == "json":
            per_user = featurize.to_json(users, self.registry)
            served = Served({**meta, "users": per_user}, "application/json", "json")
            logged = [(u["user_id"], u) for u in per_user] if log else None
        else:
            arrays = featurize.to_arrays(users, t, self.registry, now_ms, items=items)
            meta["views"] = [u.views for u in users]
            if featurize.ARROW_CONTENT_TYPE in accept:
                served = Served(featurize.arrow_stream(user_ids, arrays, meta), featurize.ARROW_CONTENT_TYPE,
                                "arrow_binary")
            else:
                meta["users"] = user_ids
                served = Served({**meta, "arrays": featurize.arrays_to_json(arrays)}, "application/json", fmt)
            logged = ([(u, {n: a[i] for n, a in arrays.items()} | {"views": users[i].views})
                       for i, u in enumerate(user_ids)] if log else None)
        return served, logged
