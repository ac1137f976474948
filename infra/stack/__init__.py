"""The local stack: Kafka, KV server, PostgreSQL, indexing job, trimmer, API, Prometheus (+ generator, Trino).

Everything runs on 127.0.0.1 as child processes of one supervisor, each in its own
process group, logging to ``<data_dir>/logs/<name>.log``. A component is "ready" when
its health check passes; the job is ready when a canary event produced to the topic
can be read back from the KV layer, which proves the whole path. A component that
dies is restarted with backoff. Stopping goes in reverse order: SIGTERM, then SIGKILL.

    python -m infra.stack run     # foreground with the generator; Ctrl-C stops everything
    python -m infra.stack up      # background (make up); `down` stops it; --trino adds Trino
    python -m infra.stack status

``supervisor`` starts, watches and stops processes; ``components`` defines each part of the
stack; ``cli`` is the command line; ``probes`` asks a running process about its port, URL or metrics.
"""
from infra.stack.cli import main
from infra.stack.components import CANARY_USER, STREAMING_PY, Stack, lake_location, private_settings
from infra.stack.probes import free_port, http_ok, metric_sum, metric_total, port_open
from infra.stack.supervisor import Component, Supervisor, supervise

__all__ = ["CANARY_USER", "STREAMING_PY", "Component", "Stack", "Supervisor", "free_port", "http_ok",
           "lake_location", "main", "metric_sum", "metric_total", "port_open", "private_settings", "supervise"]
