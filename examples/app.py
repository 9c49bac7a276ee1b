"""The demo shop: one of every kind of request the extension measures.

Routes with parameters, templates with inheritance, flashed messages, a
handled error (409), an unhandled one (500), a 404, a streamed response, a
slow route, and a health check that is not measured.

    flask --app examples.app run
"""

from __future__ import annotations

import logging
import os
import time
import typing as t

from flask import abort
from flask import flash
from flask import Flask
from flask import redirect
from flask import render_template
from flask import request
from flask import Response
from flask import stream_with_context
from flask import url_for
from flask.typing import ResponseReturnValue

from flask_signal_metrics import configure_otlp
from flask_signal_metrics import exclude
from flask_signal_metrics import SignalMetrics
from flask_signal_metrics import TraceContextFilter

ITEMS = {1: "teapot", 2: "kettle", 3: "cup"}
STOCK = {1: 5, 2: 0, 3: 12}


class OutOfStockError(Exception):
    """A business error with its own handler: a 409, not an exception metric."""


app = Flask(__name__)
app.config.update(SECRET_KEY="demo-only-not-secret")
# FLASK_SIGNAL_METRICS_NAMING=classic (say) sets SIGNAL_METRICS_NAMING.
app.config.from_prefixed_env()
metrics = SignalMetrics(app)

if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    # Spans and metrics over OTLP as well, configured by the standard
    # OTEL_* variables. Safe here also under gunicorn's preload_app: each
    # worker restarts the export threads and gets its own service.instance.id;
    # each flushes what it holds when it exits.
    configure_otlp()

# Log lines carry the trace and span ids of the request they were logged in.
_handler = logging.StreamHandler()
_handler.addFilter(TraceContextFilter())
_handler.setFormatter(
    logging.Formatter("%(levelname)s [trace_id=%(trace_id)s span_id=%(span_id)s] %(message)s")
)
app.logger.addHandler(_handler)


@app.errorhandler(OutOfStockError)
def out_of_stock(error: OutOfStockError) -> tuple[str, int]:
    return f"out of stock: {error}", 409


@app.get("/")
def index() -> str:
    return render_template("index.html", items=ITEMS)


@app.get("/items/<int:item_id>")
def item(item_id: int) -> str:
    if item_id not in ITEMS:
        abort(404)
    return render_template("item.html", item_id=item_id, name=ITEMS[item_id])


@app.post("/items/<int:item_id>/buy")
def buy(item_id: int) -> ResponseReturnValue:
    if item_id not in ITEMS:
        abort(404)
    if STOCK[item_id] <= 0:
        raise OutOfStockError(ITEMS[item_id])
    flash(f"You bought a {ITEMS[item_id]}.", "success")
    return redirect(url_for("item", item_id=item_id))


@app.get("/boom")
def boom() -> str:
    raise RuntimeError("an unhandled error, on purpose")


@app.get("/slow")
def slow() -> str:
    # Bounded: at most half a second, whatever the query asks.
    seconds = min(max(request.args.get("ms", 100, type=int), 0), 500) / 1000
    time.sleep(seconds)
    return f"slept {seconds:.3f} s"


@app.get("/stream")
def stream() -> Response:
    def lines() -> t.Iterator[str]:
        for n in range(3):
            yield f"line {n}\n"

    return Response(stream_with_context(lines()), mimetype="text/plain")


@app.get("/healthz")
@exclude
def healthz() -> str:
    return "ok"
