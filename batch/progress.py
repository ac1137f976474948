"""Progress of long offline jobs: log lines and Prometheus metrics.

Metrics go to a text file per job under ``<data_dir>/metrics/`` (the node-exporter
textfile format), since batch processes end before any scraper would come: point the
node exporter's ``--collector.textfile.directory`` (or a pushgateway) at it.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("usersignals.batch")


class Progress:
    def __init__(self, job: str, metrics_dir: Path | None, **labels: str):
        from prometheus_client import CollectorRegistry, Gauge

        self.job = job
        self.labels = labels
        self.metrics_dir = metrics_dir
        self.started = time.monotonic()
        self.registry = CollectorRegistry()
        names = ["job", "stage"]
        self._rows = Gauge("usersignals_batch_rows", "Rows handled by a batch job stage.", names,
                           registry=self.registry)
        self._seconds = Gauge("usersignals_batch_stage_seconds", "Seconds into the job when a stage ended.",
                              names, registry=self.registry)
        self._last_success = Gauge("usersignals_batch_last_success_timestamp_seconds",
                                   "When the job last finished successfully.", ["job"], registry=self.registry)
        self._failed = Gauge("usersignals_batch_failed", "1 if the job's last run failed.", ["job"],
                             registry=self.registry)
        self.figures: dict[str, int] = {}
        what = " ".join(f"{k}={v}" for k, v in labels.items())
        log.info("%s: started %s", job, what)

    def stage(self, name: str, rows: int | None = None, **details) -> None:
        elapsed = time.monotonic() - self.started
        if rows is not None:
            self.figures[name] = int(rows)
            self._rows.labels(self.job, name).set(rows)
        self._seconds.labels(self.job, name).set(elapsed)
        extra = " ".join(f"{k}={v}" for k, v in details.items())
        log.info("%s: %s%s after %.1fs %s", self.job, name, f" rows={rows}" if rows is not None else "",
                 elapsed, extra)
        self._write()

    def done(self) -> dict[str, int]:
        self._last_success.labels(self.job).set(time.time())
        self._failed.labels(self.job).set(0)
        self._write()
        log.info("%s: done in %.1fs %s", self.job, time.monotonic() - self.started, self.figures)
        return self.figures

    def failed(self) -> None:
        self._failed.labels(self.job).set(1)
        self._write()

    def _write(self) -> None:
        if self.metrics_dir is None:
            return
        from prometheus_client import write_to_textfile

        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(self.metrics_dir / f"batch_{self.job}.prom"), self.registry)
