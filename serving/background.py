"""The API's background loops (tenant sync, registry follower, metrics flush, the start-up reads):
each runs until cancelled and never dies of an error. Every error is counted in
``usersignals_api_background_errors_total{loop}`` and logged (logger ``serving.background``,
which the API's log file gets at ERROR) with what failed: the exception, or for a corrupt
tenant record its KV key and field.

A loop runs every second, so an error that persists (a corrupt record, a KV store that is down)
is counted every pass but logged the first time and then once a minute while it repeats.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

log = logging.getLogger("serving.background")

# The loops, as their label in usersignals_api_background_errors_total.
STARTUP = "startup"
TENANT_SYNC = "tenant_sync"
REGISTRY_FOLLOW = "registry_follow"
METRICS_FLUSH = "metrics_flush"
LOOPS = (STARTUP, TENANT_SYNC, REGISTRY_FOLLOW, METRICS_FLUSH)

REPEAT_LOG_S = 60.0
_MAX_REMEMBERED = 1000  # distinct messages kept for the once-a-minute rule; more are forgotten


class LoopErrors:
    """Where the background loops report what went wrong: counted every time (``counter``, a
    Counter labelled by loop; None: not counted), logged as described in the module doc."""

    def __init__(self, counter=None):
        self.counter = counter
        self._series = {loop: counter.labels(loop) for loop in LOOPS} if counter is not None else {}
        self._logged: dict[tuple[str, str], float] = {}

    def report(self, loop: str, message: str, exc: BaseException | None = None) -> None:
        """One error of ``loop``; ``exc``: an unexpected exception, logged with its traceback."""
        if self.counter is not None:
            series = self._series.get(loop)
            if series is None:
                series = self._series[loop] = self.counter.labels(loop)
            series.inc()
        now = time.monotonic()
        last = self._logged.get((loop, message))
        if last is not None and now - last < REPEAT_LOG_S:
            return
        if len(self._logged) >= _MAX_REMEMBERED:
            self._logged.clear()
        self._logged[(loop, message)] = now
        log.error("background loop %s: %s", loop, message, exc_info=exc)

    def failed(self, loop: str, exc: BaseException, what: str = "") -> None:
        """An exception that ended one pass of ``loop``."""
        self.report(loop, f"{what + ': ' if what else ''}{type(exc).__name__}: {exc}", exc)


async def every(interval_s: float, loop: str, step: Callable[[], Awaitable[object]], errors: LoopErrors) -> None:
    """``await step()`` every ``interval_s`` until cancelled; an exception is reported, not raised."""
    while True:
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any one pass
            errors.failed(loop, exc)
        await asyncio.sleep(interval_s)
