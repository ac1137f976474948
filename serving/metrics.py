"""Prometheus metrics of the serving API (one registry per app instance).

With several worker processes (``python -m serving``, ``api_workers`` > 1) every worker writes
its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory per run, set before
the workers import prometheus_client) and ``/metrics``, whichever worker answers it, sums them
over all workers: counters and histograms over every worker that ever ran in this run, the
in-flight gauge over the live ones, the config version as the newest a live worker applied.
In a single process (and an app built in-process, e.g. by tests) it is the app's own registry.

Histograms on the request path take their observations in bulk: ``observe`` appends to a list
(``BatchedHistogram``), and ``flush`` adds them to the histogram's buckets with numpy, before
every exposition and every second (``run_flush``). prometheus_client's own ``observe`` costs
~3 µs (a lock and a bucket search per call), ~6 of them a request: ~10% of the API's CPU for a
JSON request. Counters and gauges are updated as they happen.
"""
from __future__ import annotations

import asyncio
import os

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from serving.background import METRICS_FLUSH, LoopErrors, every

_LATENCY = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_SIZES = (256, 1024, 4096, 16384, 65536, 262144, 1048576)


def multiprocess_dir() -> str | None:
    """The directory the workers of this run share their samples in (None: one process)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServingMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.shared_dir = multiprocess_dir()
        if self.shared_dir:
            forget_dead_workers(self.shared_dir)  # e.g. the one this worker replaces
            self.exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposed, path=self.shared_dir)
        else:
            self.exposed = r
        self.requests = Counter("usersignals_api_requests_total", "API requests by route and status.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("usersignals_api_request_seconds", "API request latency by route.",
                                 ["route"], buckets=_LATENCY, registry=r)
        self.tenant_requests = Counter("usersignals_api_tenant_requests_total",
                                       "Feature requests by tenant and outcome.", ["tenant", "outcome"], registry=r)
        self.tenant_latency = Histogram("usersignals_api_tenant_request_seconds",
                                        "Feature request latency by tenant.", ["tenant"], buckets=_LATENCY,
                                        registry=r)
        self.stage_latency = Histogram("usersignals_api_stage_seconds", "Serving stage latency by tenant.",
                                       ["tenant", "stage"], buckets=_LATENCY, registry=r)
        self.kv_latency = Histogram("usersignals_api_kv_read_seconds", "KV read latency (one round trip a user).",
                                    buckets=_LATENCY, registry=r)
        self.kv_errors = Counter("usersignals_api_kv_errors_total", "KV operations that failed.", registry=r)
        self.response_bytes = Histogram("usersignals_api_response_bytes", "Response size by tenant and format.",
                                        ["tenant", "format"], buckets=_SIZES, registry=r)
        self.events_served = Counter("usersignals_api_events_served_total", "Events served, by tenant.",
                                     ["tenant"], registry=r)
        self.missing_features = Counter("usersignals_api_items_without_features_total",
                                        "Served events whose item had no serving-time features.", ["tenant"],
                                        registry=r)
        self.in_flight = Gauge("usersignals_api_tenant_in_flight", "Feature requests in flight by tenant.",
                               ["tenant"], registry=r, multiprocess_mode="livesum")
        self.feature_log = Counter("usersignals_api_feature_log_records_total",
                                   "Served-feature log records, by outcome.", ["outcome"], registry=r)
        # A loop that fails keeps running (serving/background.py): this says it is failing.
        self.background_errors = Counter("usersignals_api_background_errors_total",
                                         "Errors of the API's background loops (tenant sync, registry follower, "
                                         "metrics flush, start-up reads), by loop.", ["loop"], registry=r)
        self.tenant_config_version = Gauge("usersignals_api_tenant_config_version",
                                           "Config version each tenant is served with.", ["tenant"], registry=r,
                                           multiprocess_mode="livemax")

        self._tenants: dict[str, TenantMetrics] = {}
        self._routes: dict[tuple[str, int], tuple] = {}
        self._batched: list[BatchedHistogram] = []
        self.kv_read = self.batched(self.kv_latency)  # per-user KV read latency, on the request path

    def batched(self, child) -> "BatchedHistogram":
        """``child`` (a histogram, or its labelled series) observed in bulk; see the module doc."""
        b = BatchedHistogram(child)
        self._batched.append(b)
        return b

    def flush(self) -> None:
        """Every batched observation, into its histogram."""
        for b in self._batched:
            b.flush()

    async def run_flush(self, interval_s: float = 1.0, errors: LoopErrors | None = None) -> None:
        """``flush`` every ``interval_s`` until cancelled; an error is reported (``errors``), not raised."""
        async def step():
            self.flush()

        await asyncio.sleep(interval_s)
        await every(interval_s, METRICS_FLUSH, step, errors or LoopErrors(self.background_errors))

    def of_tenant(self, name: str) -> "TenantMetrics":
        """The tenant's labelled series, looked up once (``labels()`` costs microseconds a call)."""
        tm = self._tenants.get(name)
        if tm is None:
            tm = self._tenants[name] = TenantMetrics(self, name)
        return tm

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        series = self._routes.get((route, status))
        if series is None:
            series = self._routes[(route, status)] = (self.batched(self.latency.labels(route)),
                                                      self.requests.labels(route, str(status)))
        series[0].observe(seconds)
        series[1].inc()

    def exposition(self) -> bytes:
        """The text /metrics answers: this process's samples, or every worker's summed."""
        self.flush()
        return generate_latest(self.exposed)

    def worker_exit(self) -> None:
        """A worker that stops drops out of the live gauges (its counters stay in the sums)."""
        self.flush()
        if self.shared_dir:
            multiprocess.mark_process_dead(os.getpid(), self.shared_dir)


class TenantMetrics:
    """One tenant's series of the feature route and its stages."""

    __slots__ = ("in_flight", "ok", "error", "timeout", "throttled", "latency", "stages", "events_served",
                 "missing_features", "response_bytes", "_m", "_name")

    def __init__(self, m: ServingMetrics, name: str):
        self.in_flight = m.in_flight.labels(name)
        self.ok, self.error, self.timeout, self.throttled = (
            m.tenant_requests.labels(name, o) for o in ("ok", "error", "timeout", "throttled"))
        self.latency = m.batched(m.tenant_latency.labels(name))
        self.stages = {s: m.batched(m.stage_latency.labels(name, s))
                       for s in ("retrieve", "filter", "enrich", "size", "featurize")}
        self.events_served = m.events_served.labels(name)
        self.missing_features = m.missing_features.labels(name)
        self.response_bytes: dict[str, BatchedHistogram] = {}  # format label -> series
        self._m, self._name = m, name

    def bytes_of(self, label: str) -> "BatchedHistogram":
        """The response-size series of one format label."""
        series = self.response_bytes.get(label)
        if series is None:
            series = self.response_bytes[label] = self._m.batched(self._m.response_bytes.labels(self._name, label))
        return series


class BatchedHistogram:
    """A histogram series whose ``observe`` is a list append; ``flush`` adds what was observed
    to its buckets and sum, as that many ``observe`` calls of prometheus_client would."""

    __slots__ = ("child", "values", "observe")

    def __init__(self, child):
        self.child = child
        self.values: list[float] = []
        self.observe = self.values.append

    def flush(self) -> None:
        if not self.values:
            return
        a = np.asarray(self.values, dtype=np.float64)
        self.values.clear()  # the same list: ``observe`` is bound to it
        c = self.child
        # prometheus_client puts a value in the first bucket whose upper bound is >= it
        counts = np.bincount(np.searchsorted(c._upper_bounds, a, side="left"), minlength=len(c._upper_bounds))
        for bucket, n in zip(c._buckets, counts.tolist()):
            if n:
                bucket.inc(n)
        c._sum.inc(float(a.sum()))


def forget_dead_workers(path: str) -> list[int]:
    """Drop the live-gauge files of worker processes that no longer exist (killed ones could not
    say so themselves); returns their pids."""
    dead = []
    for name in os.listdir(path):
        if not name.startswith("gauge_live") or not name.endswith(".db"):
            continue
        try:
            pid = int(name[:-3].rsplit("_", 1)[1])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.append(pid)
        except PermissionError:
            pass
    for pid in set(dead):
        multiprocess.mark_process_dead(pid, path)
    return sorted(set(dead))
