"""Test-only stand-in for ``prometheus_flask_exporter.multiprocess``."""

from flask_signal_metrics.compat.multiprocess import *  # noqa: F403
