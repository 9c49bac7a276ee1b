"""The same extension in an app factory: one extension object, many apps.

flask --app "examples.factory:create_app()" run
"""

from __future__ import annotations

import typing as t

from flask import Flask

from flask_signal_metrics import SignalMetrics

#: Created once at import; holds no app. Each app's state lives in its own
#: ``app.extensions["signal_metrics"]``.
signal_metrics = SignalMetrics()


def create_app(config: dict[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SIGNAL_METRICS_EXCLUDE=[r"/static/.*"],
        SIGNAL_METRICS_LABELS={"service": "factory-demo"},
    )
    if config:
        app.config.update(config)
    signal_metrics.init_app(app)

    @app.get("/hello/<name>")
    def hello(name: str) -> str:
        return f"hello {name}"

    return app
