"""Questions asked of a running process from outside: is its port open, does its URL answer,
what does its Prometheus endpoint count. The supervisor's health checks, tests and benchmarks use them."""
from __future__ import annotations

import random
import socket
import urllib.request


# Where free_port looks: below the kernel's ephemeral ports (ip_local_port_range, from 32768 by
# default), which it hands out to outgoing connections and to listeners on port 0, and below the
# 20000-39999 that tests/integration/test_kv_store.py's Redis Cluster nodes take.
PRIVATE_PORTS = range(10000, 20000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server of one's own to listen on (a private
    stack, a benchmark), never one this process handed out before. Ports the kernel picks
    (bind to port 0) could come back twice among a stack's dozen, and a connection made
    meanwhile could take one before its server started: the stack then found its own port
    "already in use". From ``PRIVATE_PORTS`` neither happens."""
    for _ in range(1000):
        port = random.choice(PRIVATE_PORTS)
        if port in _handed_out:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {PRIVATE_PORTS.start}-{PRIVATE_PORTS.stop - 1} on 127.0.0.1")


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` (all label sets, or those carrying every one of ``labels``)
    in a Prometheus text exposition."""
    # Imported here: Airflow's environment imports infra.stack (private_settings) and has no prometheus_client.
    from prometheus_client.parser import text_string_to_metric_families

    return sum((sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == name and labels.items() <= sample.labels.items()), 0.0)


def metric_total(port: int, name: str, host: str = "127.0.0.1") -> float | None:
    """Sum of a metric's samples (all label sets) on a Prometheus endpoint; None if unreachable."""
    try:
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    return metric_sum(text, name)
