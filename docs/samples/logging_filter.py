"""Logs joined to traces: every record gets ``trace_id``, ``span_id`` and ``trace_sampled``."""

from __future__ import annotations

import logging

from flask import Flask

from flask_signal_metrics import TraceContextFilter

app = Flask(__name__)

handler = logging.StreamHandler()
handler.addFilter(TraceContextFilter())
handler.setFormatter(
    logging.Formatter("%(levelname)s [trace_id=%(trace_id)s span_id=%(span_id)s] %(message)s")
)
app.logger.addHandler(handler)
