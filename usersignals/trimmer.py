"""The KV layer's background trimmer: keeps every sequence at its dataset's retention N.

``python -m usersignals.trimmer`` runs it forever against the configured KV server,
serving its metrics on ``trimmer_metrics_port``; with nothing to trim it sleeps ``trim_interval_s``
(both settings, ``usersignals.settings``). It re-reads the registry file every ``RELOAD_EVERY_S``,
so experiment datasets registered meanwhile are trimmed (to n) and expire at their end.
"""
from __future__ import annotations

import logging
import signal
import time

from prometheus_client import Counter, Histogram, start_http_server

from usersignals.kv import SequenceStore, connect, run_trimmer
from usersignals.registry import Registry, RegistryError, load_registry
from usersignals.settings import load_settings

log = logging.getLogger("usersignals.trimmer")

KEYS = Counter("usersignals_trimmer_keys_checked_total", "Sequences checked by the trimmer.")
REMOVED = Counter("usersignals_trimmer_events_removed_total", "Events trimmed past their dataset's retention.")
PASS = Histogram("usersignals_trimmer_pass_seconds", "Duration of one trim pass.",
                 buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))


# How often the trimmer re-reads the registry file: an experiment registered while it runs
# (datasets exp_<experiment>_<rule>) is trimmed and given its TTL from then on.
RELOAD_EVERY_S = 30.0


def reload(current: Registry, path) -> Registry:
    """The registry file's current content, or ``current`` when it is unchanged or invalid
    (an invalid file is logged; the trimmer keeps trimming what it knew)."""
    try:
        fresh = load_registry(path)
    except (RegistryError, OSError) as exc:  # a ConfigMap swapped mid-read, a permission
        log.warning("registry %s not reloaded: %s", path, exc)
        return current
    if fresh.digest != current.digest:
        added = sorted(set(fresh.datasets) - set(current.datasets))
        log.info("registry reloaded (%s): datasets added %s", fresh.digest[:12], added)
        return fresh
    return current


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    port, interval = settings.trimmer_metrics_port, settings.trim_interval_s
    start_http_server(port, addr=settings.bind_host)
    registry = load_registry(settings.registry_path)
    store = SequenceStore(connect(settings), registry, settings.kv_prefix)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    last_log = [time.monotonic(), 0]

    def on_stats(stats, seconds):
        KEYS.inc(stats.keys_checked)
        REMOVED.inc(stats.events_removed)
        PASS.observe(seconds)
        last_log[1] += stats.events_removed
        if time.monotonic() - last_log[0] > 30:
            log.info("trimmed %d events in the last 30s", last_log[1])
            last_log[:] = [time.monotonic(), 0]

    log.info("trimming %s%s every %.1fs (metrics :%d)", settings.kv_url.rsplit("@", 1)[-1],
             " (cluster)" if settings.kv_cluster else "", interval, port)
    next_reload = [time.monotonic() + RELOAD_EVERY_S]

    def stop() -> bool:
        return bool(stopping) or time.monotonic() >= next_reload[0]

    while not stopping:
        if time.monotonic() >= next_reload[0]:
            next_reload[0] = time.monotonic() + RELOAD_EVERY_S
            store.registry = reload(store.registry, settings.registry_path)
        try:
            run_trimmer(store, interval, stop=stop, on_stats=on_stats)
        except Exception as exc:  # KV restarting: wait and go on, never die
            log.warning("trim pass failed (%s); retrying in 2s", exc)
            time.sleep(2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
