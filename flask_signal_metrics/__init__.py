"""Prometheus metrics for Flask, recorded by receivers of Flask's own signals."""

from __future__ import annotations

import typing as t

from .config import Settings as Settings
from .extension import SignalMetrics as SignalMetrics
from .extension import start_metrics_server as start_metrics_server
from .extension import worker_exited as worker_exited
from .state import exclude as exclude
from .tracing.logging import TraceContextFilter as TraceContextFilter
from .version import VERSION as __version__

if t.TYPE_CHECKING:
    from .otlp.setup import OTLPExport


def configure_otlp(**options: t.Any) -> OTLPExport:
    """Export spans and metrics over OTLP (needs the ``[otlp]`` extra).

    See :func:`flask_signal_metrics.otlp.setup.configure_otlp`; imported on call, so
    that the SDK is only needed by those who export.
    """
    try:
        from .otlp.setup import configure_otlp as configure
    except ImportError as e:
        raise ImportError(
            f"configure_otlp needs the OpenTelemetry SDK and OTLP exporters ({e});"
            " install them with: pip install 'flask-signal-metrics[otlp]'"
        ) from e
    return configure(**options)


__all__ = [
    "Settings",
    "SignalMetrics",
    "TraceContextFilter",
    "__version__",
    "configure_otlp",
    "exclude",
    "start_metrics_server",
    "worker_exited",
]
