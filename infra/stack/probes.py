"""Questions asked of a running process from outside: is its port open, does its URL answer,
what does its Prometheus endpoint count. The supervisor's health checks, tests and benchmarks use them."""
from __future__ import annotations

import socket
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def metric_total(port: int, name: str, host: str = "127.0.0.1") -> float | None:
    """Sum of a metric's samples (all label sets) on a Prometheus endpoint; None if unreachable."""
    try:
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
