"""gunicorn settings of examples/pfe_migrated.py: prometheus-flask-exporter's hook, unchanged."""

from __future__ import annotations

import typing as t

from flask_signal_metrics.compat.multiprocess import GunicornInternalPrometheusMetrics


def child_exit(server: t.Any, worker: t.Any) -> None:
    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
