"""The installed distribution's version: a leaf module, so that any module may import it."""

from __future__ import annotations

try:
    from importlib.metadata import version as _dist_version

    VERSION = _dist_version("flask-signal-metrics")
except Exception:  # running from a source tree that was never installed
    VERSION = "0+unknown"
