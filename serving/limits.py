"""Per-tenant admission: ``max_concurrency`` (requests in flight) and ``max_rps`` (requests per
second), held across the API's worker processes by dividing each limit among them.

``python -m serving`` runs ``api_workers`` (N) processes on one port. Each worker enforces
its share of every tenant's limits, in memory, with no coordination on the request path:

- rate: a token bucket of ``max_rps / N`` requests/s (burst ``max(1, max_rps / N)``) per worker,
  so the workers together never admit more than ``max_rps`` (plus the summed burst);
- concurrency: ``max(1, max_concurrency // N)`` in flight per worker, so together they never
  hold more than ``max_concurrency`` (a tenant with fewer slots than workers gets one a worker:
  N in flight). A changed limit applies to the next request; in-flight counts carry over.

Why not shared in the KV layer (a Lua token bucket and a ZSET of in-flight leases, exact across
workers and surviving a killed worker)? Its cost, measured by ``python -m bench.api_workers``
(five runs, 2026-12-02, this 2-core machine, the stack's redis-server; redis.asyncio + hiredis,
uvloop; an acquire EVALSHA and a release ZREM a request): 92-119 us of API CPU and 41-47 us of
KV CPU a request with 32 requests concurrent, 175-267 us of API CPU one at a time. That is a
third of the issue's 0.35 ms of API CPU a request, for the limits alone. Dividing costs
0.7-1.0 us a request.

Accuracy, measured the same way (three runs; 2 workers; a tenant with max_rps 40 and max_concurrency 2
flooded for 4 s by closed loops of 20-user requests; allowed: 40 × 4 s plus both workers'
buckets of 20 full at the start = 200): spread over 8 connections, 4 on each worker, it got
196-198 of the 200 (0.98-0.99), in flight never seen above 2; over 4 connections all on one
worker 99-100 (0.50); over one connection 99 (0.50). So a flood gets its limit and never more;
a tenant whose traffic is uneven across workers gets less: a connection is served by one worker
for its life, so a tenant with a single connection gets 1/N of its rate (and its concurrency
share); concurrent requests through a connection pool spread over the workers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from usersignals.registry import Tenant


class TokenBucket:
    """``rate`` requests per second with bursts of up to ``burst``; ``take`` says how long to wait."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic):
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.clock = clock
        self.tokens = self.burst
        self.at = clock()

    def take(self) -> float:
        """0.0 if a request may go now (and counts it), else the seconds until one may."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def rate_share(max_rps: float, workers: int) -> float:
    """One worker's request rate: an equal share of the tenant's."""
    return max_rps / workers


def concurrency_share(max_concurrency: int, workers: int) -> int:
    """One worker's in-flight limit: never above the tenant's in total, but at least one."""
    return max(1, max_concurrency // workers)


@dataclass(frozen=True)
class Throttled:
    """Why a request was refused (429) and, for a rate limit, when to retry."""
    reason: str                 # "rate" or "concurrency"
    message: str
    retry_after_s: float | None = None


class TenantLimits:
    """This worker's share of every tenant's limits (``workers``: the processes sharing them)."""

    def __init__(self, workers: int = 1, clock=time.monotonic):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.clock = clock
        self._in_flight: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def in_flight(self, tenant: str) -> int:
        return self._in_flight.get(tenant, 0)

    def acquire(self, t: Tenant) -> Throttled | None:
        """None: admitted and counted in flight (call ``release`` when done); else why not.
        Concurrency is checked first, so a refused request does not spend a rate token."""
        n = self._in_flight.get(t.name, 0)
        if n >= concurrency_share(t.max_concurrency, self.workers):
            return Throttled("concurrency", f"tenant {t.name!r} is at its limit of {t.max_concurrency} "
                                            "requests in flight; retry shortly")
        if t.max_rps:
            rate = rate_share(t.max_rps, self.workers)
            bucket = self._buckets.get(t.name)
            if bucket is None or bucket.rate != rate:  # a changed rate starts afresh
                bucket = self._buckets[t.name] = TokenBucket(rate, clock=self.clock)
            wait = bucket.take()
            if wait:
                return Throttled("rate", f"tenant {t.name!r} is over its rate of {t.max_rps:g} requests/s; "
                                         f"retry in {wait:.2f}s", wait)
        self._in_flight[t.name] = n + 1
        return None

    def release(self, t: Tenant) -> None:
        self._in_flight[t.name] -= 1


class Slot:
    """An admitted request's in-flight slot, given back on leaving ``async with``."""

    __slots__ = ("limits", "tenant")

    def __init__(self, limits: TenantLimits, tenant: Tenant):
        self.limits, self.tenant = limits, tenant

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc) -> None:
        self.limits.release(self.tenant)
