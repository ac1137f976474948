"""infra.stack.probes: summing a metric from Prometheus text, and from a live endpoint; free ports."""
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from infra.stack.probes import free_port, metric_sum, metric_total

# What the API's /metrics looks like, with the cases a line-by-line reader gets wrong: a label
# value holding braces and a space, a sample carrying a timestamp, a counter's _created sample,
# and a metric whose name another one's begins with.
EXPOSITION = """\
# HELP usersignals_api_requests_total Requests by route and status.
# TYPE usersignals_api_requests_total counter
usersignals_api_requests_total{route="/v1/users/{user_id}/events",status="200"} 7.0
usersignals_api_requests_total{route="/v1/features",status="200"} 5.0
usersignals_api_requests_total{route="/v1/features",status="429"} 2.0 1733140000000
usersignals_api_requests_created{route="/v1/features",status="429"} 1.733e+09
# HELP usersignals_api_requests_total_by_tenant Requests by tenant.
# TYPE usersignals_api_requests_total_by_tenant gauge
usersignals_api_requests_total_by_tenant{tenant="flood"} 100.0
# HELP usersignals_api_tenant_in_flight Requests in flight.
# TYPE usersignals_api_tenant_in_flight gauge
usersignals_api_tenant_in_flight{tenant="flood",note="a b"} 3.0
usersignals_api_tenant_in_flight{tenant="quiet",note="a b"} 1.0
# HELP usersignals_indexer_end_to_end_lag_seconds Lag.
# TYPE usersignals_indexer_end_to_end_lag_seconds histogram
usersignals_indexer_end_to_end_lag_seconds_bucket{le="1.0"} 3.0
usersignals_indexer_end_to_end_lag_seconds_bucket{le="+Inf"} 4.0
usersignals_indexer_end_to_end_lag_seconds_count 4.0
usersignals_indexer_end_to_end_lag_seconds_sum 2.5
"""


def test_a_metric_is_summed_over_its_label_sets_and_nothing_else():
    assert metric_sum(EXPOSITION, "usersignals_api_requests_total") == 14.0
    assert metric_sum(EXPOSITION, "usersignals_indexer_end_to_end_lag_seconds_sum") == 2.5
    assert metric_sum(EXPOSITION, "usersignals_indexer_end_to_end_lag_seconds_count") == 4.0


def test_labels_select_the_samples_that_carry_all_of_them():
    assert metric_sum(EXPOSITION, "usersignals_api_requests_total", route="/v1/features") == 7.0
    assert metric_sum(EXPOSITION, "usersignals_api_requests_total", route="/v1/features", status="429") == 2.0
    assert metric_sum(EXPOSITION, "usersignals_api_requests_total", route="/v1/users/{user_id}/events") == 7.0
    assert metric_sum(EXPOSITION, "usersignals_api_tenant_in_flight", tenant="flood") == 3.0
    assert metric_sum(EXPOSITION, "usersignals_api_tenant_in_flight", tenant="nobody") == 0.0


def test_a_metric_that_is_not_exposed_sums_to_zero():
    assert metric_sum(EXPOSITION, "usersignals_indexer_dlq_total") == 0.0


def test_metric_total_reads_a_live_endpoint_and_none_when_nothing_listens():
    registry = CollectorRegistry()
    events_in = Counter("usersignals_indexer_events_in", "Events read.", ["event_type"], registry=registry)
    lag = Histogram("usersignals_indexer_end_to_end_lag_seconds", "Lag.", registry=registry)
    events_in.labels("view").inc(3)
    events_in.labels("click").inc(4)
    lag.observe(0.25)
    lag.observe(1.5)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        assert metric_total(port, "usersignals_indexer_events_in_total") == 7.0
        assert metric_total(port, "usersignals_indexer_end_to_end_lag_seconds_sum") == 1.75
        assert metric_total(port, "usersignals_indexer_end_to_end_lag_seconds_count") == 2.0
        assert metric_total(port, "usersignals_indexer_dlq_total") == 0.0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert metric_total(port, "usersignals_indexer_events_in_total") is None


def test_free_port_never_hands_out_a_port_twice_and_stays_below_the_kernels_ports():
    """A stack takes a dozen ports in a row: with ports the kernel picked, two of them once came
    out equal (the broker's controller and PostgreSQL), and the stack refused to start."""
    from infra.stack.probes import PRIVATE_PORTS

    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert all(p in PRIVATE_PORTS for p in ports)
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert PRIVATE_PORTS.stop <= low  # no outgoing connection or port-0 listener can take one


def test_free_port_passes_over_a_port_in_use(monkeypatch):
    import socket

    import infra.stack.probes as probes

    with socket.socket() as gone:
        gone.bind(("127.0.0.1", 0))
        free = gone.getsockname()[1]  # free again once closed
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        held = holder.getsockname()[1]
        picks = iter([held, held, free])
        monkeypatch.setattr(probes, "PRIVATE_PORTS", range(held, held + 1))
        monkeypatch.setattr(probes.random, "choice", lambda _range: next(picks))
        monkeypatch.setattr(probes, "_handed_out", set())
        assert probes.free_port() == free
