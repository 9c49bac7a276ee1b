"""Prometheus metrics for Flask, recorded by receivers of Flask's own signals."""

from __future__ import annotations

from .config import Settings as Settings
from .extension import SignalMetrics as SignalMetrics
from .extension import start_metrics_server as start_metrics_server
from .extension import VERSION as __version__
from .extension import worker_exited as worker_exited
from .state import exclude as exclude

__all__ = [
    "Settings",
    "SignalMetrics",
    "__version__",
    "exclude",
    "start_metrics_server",
    "worker_exited",
]
