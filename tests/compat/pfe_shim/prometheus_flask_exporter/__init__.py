"""Test-only stand-in: prometheus-flask-exporter's own tests import this name.

It re-exports :mod:`flask_signal_metrics.compat` and nothing else, so that
those test files run unchanged against the compatibility layer.
"""

from flask_signal_metrics.compat import *  # noqa: F403
from flask_signal_metrics.compat import __all__ as __all__
from flask_signal_metrics.version import VERSION as __version__  # noqa: F401
