"""Per-tenant limits divided among API workers (serving/limits.py), and metrics summed over workers."""
import os
import subprocess
import sys
import textwrap

import pytest

from serving.limits import TenantLimits, TokenBucket, concurrency_share, rate_share
from serving.metrics import forget_dead_workers
from usersignals.registry import Tenant


def tenant(name="t", max_concurrency=32, max_rps=0.0):
    return Tenant(name, {"clicks": 10}, max_concurrency=max_concurrency, max_rps=max_rps)


def test_token_bucket_allows_the_rate_with_a_burst_and_says_how_long_to_wait():
    t = [0.0]
    b = TokenBucket(rate=2.0, clock=lambda: t[0])
    assert [b.take() for _ in range(2)] == [0.0, 0.0]   # burst of 2
    wait = b.take()
    assert 0.49 < wait <= 0.5
    t[0] += 0.5
    assert [b.take(), b.take()] == [0.0, pytest.approx(0.5)]   # a refused take leaves the bucket as it was


@pytest.mark.parametrize("limit,workers,share", [(32, 1, 32), (32, 2, 16), (5, 2, 2), (4, 4, 1), (1, 2, 1), (3, 8, 1)])
def test_concurrency_share_never_sums_over_the_limit_unless_below_one_a_worker(limit, workers, share):
    assert concurrency_share(limit, workers) == share
    assert share * workers <= max(limit, workers)


def test_rate_share_is_an_equal_part():
    assert rate_share(100.0, 4) == 25.0 and rate_share(1.0, 2) == 0.5


def test_one_worker_admits_up_to_the_concurrency_limit_and_releases():
    lim = TenantLimits(workers=1)
    t = tenant(max_concurrency=2)
    assert lim.acquire(t) is None and lim.acquire(t) is None
    refused = lim.acquire(t)
    assert refused.reason == "concurrency" and "limit of 2 requests in flight" in refused.message
    assert refused.retry_after_s is None
    lim.release(t)
    assert lim.in_flight("t") == 1 and lim.acquire(t) is None
    assert lim.acquire(tenant("other", max_concurrency=1)) is None  # per tenant


def test_a_changed_limit_applies_to_the_next_request_with_the_in_flight_count_kept():
    lim = TenantLimits(workers=1)
    for _ in range(3):
        assert lim.acquire(tenant(max_concurrency=4)) is None
    assert lim.acquire(tenant(max_concurrency=3)).reason == "concurrency"
    assert lim.acquire(tenant(max_concurrency=8)) is None


def test_rate_refusal_says_when_to_retry_and_a_concurrency_refusal_spends_no_token():
    now = [0.0]
    lim = TenantLimits(workers=2, clock=lambda: now[0])
    t = tenant(max_concurrency=2, max_rps=4)      # this worker: 1 in flight, 2 requests/s, burst 2
    assert lim.acquire(t) is None
    assert lim.acquire(t).reason == "concurrency"
    lim.release(t)
    assert lim.acquire(t) is None                 # the second token: the refusal above took none
    lim.release(t)
    refused = lim.acquire(t)
    assert refused.reason == "rate" and 0.49 < refused.retry_after_s <= 0.5
    assert "rate of 4 requests/s" in refused.message
    now[0] += 0.5
    assert lim.acquire(t) is None


def flood(workers, route, seconds=10.0, step=0.001, max_rps=40.0, max_concurrency=4, busy=0.0):
    """A request every ``step`` seconds, sent to worker ``route(i)``; each admitted one holds its
    slot for ``busy`` seconds. Returns (admitted, peak in flight summed over workers)."""
    now = [0.0]
    procs = [TenantLimits(workers, clock=lambda: now[0]) for _ in range(workers)]
    t = tenant(max_concurrency=max_concurrency, max_rps=max_rps)
    ends: list[tuple[float, int]] = []
    admitted = peak = 0
    for i in range(int(seconds / step)):
        now[0] = i * step
        for end, w in [e for e in ends if e[0] <= now[0]]:
            procs[w].release(t)
            ends.remove((end, w))
        w = route(i)
        if procs[w].acquire(t) is None:
            admitted += 1
            ends.append((now[0] + busy, w))
        peak = max(peak, sum(p.in_flight("t") for p in procs))
    return admitted, peak


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_a_flood_spread_over_the_workers_gets_the_tenants_rate_and_no_more(workers):
    admitted, _ = flood(workers, route=lambda i: i % workers)
    assert 40 * 10 <= admitted <= 40 * 10 + max(workers, 40)   # the rate, plus one burst at most


def test_a_flood_on_one_worker_gets_its_share_only():
    admitted, _ = flood(4, route=lambda i: 0)
    assert admitted == pytest.approx(40 * 10 / 4, abs=11)


@pytest.mark.parametrize("workers", [2, 4])
def test_in_flight_summed_over_workers_stays_within_the_tenants_limit(workers):
    _, peak = flood(workers, route=lambda i: (i * 7) % workers, max_rps=0.0, max_concurrency=4, busy=0.0105)
    assert peak == 4


def test_zero_workers_is_refused():
    with pytest.raises(ValueError):
        TenantLimits(workers=0)


def test_dead_workers_drop_out_of_the_live_gauges(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (os.getpid(), dead.pid):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
        (tmp_path / f"counter_{pid}.db").write_bytes(b"")
    assert forget_dead_workers(str(tmp_path)) == [dead.pid]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"gauge_livesum_{os.getpid()}.db", f"counter_{os.getpid()}.db", f"counter_{dead.pid}.db"])


WORKER = textwrap.dedent("""
    from serving.metrics import ServingMetrics
    m = ServingMetrics()
    m.requests.labels("/v1/features", "200").inc({n})
    m.in_flight.labels("t").inc({n})
    m.tenant_config_version.labels("t").set({n})
    m.latency.labels("/v1/features").observe(0.001)
    if {exit}:
        m.worker_exit()
""")


def test_metrics_of_worker_processes_are_summed(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n, leaves in ((2, False), (3, False), (5, True)):
        subprocess.run([sys.executable, "-c", WORKER.format(n=n, exit=leaves)], env=env, check=True)
    # A worker starting now forgets the live gauges of the two that died without saying so (the
    # third said so): counters and histograms sum every worker of the run, gauges the live ones.
    text = subprocess.run([sys.executable, "-c", "from serving.metrics import ServingMetrics; import sys; "
                           "m = ServingMetrics(); m.in_flight.labels('t').inc(4); m.tenant_config_version.labels('t').set(1); "
                           "sys.stdout.write(m.exposition().decode())"],
                          env=env, check=True, capture_output=True, text=True).stdout
    assert 'usersignals_api_requests_total{route="/v1/features",status="200"} 10.0' in text
    assert 'usersignals_api_request_seconds_count{route="/v1/features"} 3.0' in text
    assert 'usersignals_api_tenant_in_flight{tenant="t"} 4.0' in text
    assert 'usersignals_api_tenant_config_version{tenant="t"} 1.0' in text  # the live one's, not the dead 5


def test_one_process_keeps_its_own_registry(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    from serving.metrics import ServingMetrics

    m = ServingMetrics()
    m.requests.labels("/x", "200").inc()
    assert m.exposed is m.registry
    assert b'usersignals_api_requests_total{route="/x",status="200"} 1.0' in m.exposition()
