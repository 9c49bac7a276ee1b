"""OTLP export of spans and metrics, configured from the standard variables."""

from __future__ import annotations

from flask_signal_metrics import configure_otlp

otlp = configure_otlp()  # once per process; otlp.force_flush(), otlp.shutdown()
