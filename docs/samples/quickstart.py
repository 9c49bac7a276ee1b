"""The quick start: one app, metrics on ``GET /metrics``."""

from __future__ import annotations

from flask import Flask

from flask_signal_metrics import exclude
from flask_signal_metrics import SignalMetrics

app = Flask(__name__)
SignalMetrics(app)  # metrics on GET /metrics


@app.get("/items/<int:item_id>")
def item(item_id: int) -> str:  # counted as http_route="/items/<int:item_id>"
    return "..."


@app.get("/healthz")
@exclude  # not measured
def healthz() -> str:
    return "ok"
