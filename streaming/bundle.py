"""Run a callback when the PyFlink bundle that fed a function finishes.

PyFlink's DataStream API has no public end-of-bundle hook, but the runtime calls
``Operation.finish()`` at the end of every bundle, and Flink finishes the bundle
before it takes a checkpoint (``prepareSnapshotPreBarrier``). Flushing buffered work
there gives batched I/O with at-least-once safety: when a checkpoint commits an
offset, everything read before it has been flushed.

A function calls ``bundle.pending(flush)`` when it buffers its first element of a
bundle; the flush runs in the same thread as the bundle's elements, once, when the
bundle finishes. An exception from a flush fails the bundle, so Flink restarts from
the last checkpoint rather than committing offsets past unwritten data.
"""
from __future__ import annotations

import threading
from typing import Callable

_pending: dict[int, list[Callable[[], object]]] = {}
_lock = threading.Lock()
_installed = False


def pending(flush: Callable[[], object]) -> None:
    """Schedule ``flush`` for the end of the current thread's bundle."""
    tid = threading.get_ident()
    with _lock:
        _pending.setdefault(tid, []).append(flush)


def finish_current_bundle() -> None:
    """Run and clear the flushes scheduled by this thread (what the runtime hook calls)."""
    tid = threading.get_ident()
    with _lock:
        flushes = _pending.pop(tid, [])
    for i, flush in enumerate(flushes):
        try:
            flush()
        except BaseException:
            # Keep the rest scheduled so a retried finish still flushes them.
            with _lock:
                _pending.setdefault(tid, [])[:0] = flushes[i + 1:]
            raise


def install() -> None:
    """Hook ``finish_current_bundle`` into PyFlink's end of bundle (idempotent)."""
    global _installed
    if _installed:
        return
    from pyflink.fn_execution.datastream.process import operations

    original = operations.Operation.finish

    def finish(self):
        finish_current_bundle()
        original(self)

    operations.Operation.finish = finish
    _installed = True
