"""Each worker's process metrics in multiprocess mode."""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry
from prometheus_client import Gauge
from prometheus_client import ProcessCollector

from ..forks import at_fork
from .writer import FILES

logger = logging.getLogger("flask_signal_metrics")

#: The process collector's sample -> our per-worker gauge (set, not added).
WORKER_METRICS = {
    "process_cpu_seconds_total": "flask_worker_cpu_seconds",
    "process_resident_memory_bytes": "flask_worker_resident_memory_bytes",
    "process_virtual_memory_bytes": "flask_worker_virtual_memory_bytes",
    "process_open_fds": "flask_worker_open_fds",
    "process_start_time_seconds": "flask_worker_start_time_seconds",
}


#: Seconds between two copies of a worker's process metrics.
WORKER_INTERVAL = 5.0


class WorkerStats:
    """Each worker's process metrics in multiprocess mode, one series per live worker.

    prometheus_client's process collector cannot be aggregated across
    processes, so each worker copies its figures into ``liveall`` gauges
    (a ``pid`` label each; a dead worker's series go with
    ``mark_process_dead``) from a daemon thread, every :data:`WORKER_INTERVAL` seconds.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauges = {
            sample: Gauge(
                name,
                f"This worker's {sample} (process metrics per worker, multiprocess mode).",
                registry=registry,
                multiprocess_mode="liveall",
            )
            for sample, name in WORKER_METRICS.items()
        }
        self._process = ProcessCollector(registry=None)

    def refresh(self) -> None:
        for metric in self._process.collect():
            for sample in metric.samples:
                gauge = self._gauges.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)

    def start(self) -> None:
        """Refresh now and from a daemon thread; in a fork, from its first recorded value."""
        self.refresh()
        self._start_thread()
        # gunicorn's preload_app forks workers from a process that ran this:
        # threads do not survive a fork, so each child starts its own.
        at_fork(self._forked)

    def _forked(self) -> None:
        # A forked child is a worker (gunicorn's preload_app) or a helper a
        # worker forked (multiprocessing): only a worker records requests.
        # A helper's series would outlive it, as nothing marks it dead, so
        # the thread starts with the child's first recorded value. (Runs
        # after FILES.forget, which empties the list: registered later.)
        FILES.on_first_record.append(self._start_thread)

    def _start_thread(self) -> None:
        # The child's first refresh is the thread's, not the fork handler's:
        # the client's lock may have been held by another thread at the
        # fork, and then only this thread waits, not the child itself.
        threading.Thread(
            target=self._loop, name="flask-signal-metrics:workers", daemon=True
        ).start()

    def _loop(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # a vanished /proc entry: try again next time
                logger.debug("refreshing worker metrics failed", exc_info=True)
            time.sleep(WORKER_INTERVAL)
