"""An app with no instrumentation code, for ``opentelemetry-instrument``.

A team on opentelemetry-instrumentation-flask runs it as::

    OTEL_SERVICE_NAME=shop opentelemetry-instrument gunicorn -w 4 examples.otel_auto:app

With flask-signal-metrics installed (``pip install 'flask-signal-metrics[instrument]'``)
the same command finds :class:`~flask_signal_metrics.compat.opentelemetry.SignalMetricsInstrumentor`
by its entry point; uninstall opentelemetry-instrumentation-flask, or switch it off with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=flask``. Nothing here changes.
"""

from __future__ import annotations

from flask import abort
from flask import Flask

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> str:
    return "ok"


@app.get("/items/<int:item_id>")
def item(item_id: int) -> str:
    if item_id > 100:
        abort(404)
    return f"item {item_id}"


@app.get("/boom")
def boom() -> str:
    raise ValueError("boom")
