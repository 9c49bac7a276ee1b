"""Metrics on views: a counter by status on one view, a histogram on every view."""

from __future__ import annotations

from flask import Flask
from flask import request

from flask_signal_metrics import SignalMetrics

signal_metrics = SignalMetrics(serve_default_registry=False)

orders = signal_metrics.counter(
    "orders",
    "Orders, by status and kind.",
    {"status": lambda response: response.status_code, "kind": lambda: request.args["kind"]},
)
signal_metrics.register_default(
    signal_metrics.histogram(
        "view_seconds", "Every view's requests.", {"view": lambda: request.endpoint}
    )
)


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/orders")
    @orders
    def place_order() -> tuple[str, int]:
        return "placed", 201

    signal_metrics.init_app(app)
    return app
