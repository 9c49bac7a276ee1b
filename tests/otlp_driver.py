"""A process that exports over OTLP, driven by the tests in tests/otlp/.

``configure_otlp`` sets the process's global tracer provider, which
OpenTelemetry allows once per process: so each OTLP test runs its app here,
in a process of its own, as a deployment would. The app is created (and the
extension initialised) before ``configure_otlp`` is called, which shows that
a provider set after ``init_app`` is used.

    python tests/otlp_driver.py requests N     # N requests, flush, print /metrics
    python tests/otlp_driver.py blocked N      # N requests while an export is stuck
    python tests/otlp_driver.py twice 0        # configure_otlp after a provider is set

Prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import sys
import threading
import typing as t

from blinker import Namespace
from flask import flash
from flask import Flask
from flask import render_template_string

from flask_signal_metrics import configure_otlp
from flask_signal_metrics import SignalMetrics

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

#: One of the app's own signals, counted by the extension (and sent over OTLP).
page_shown = Namespace().signal("page-shown")


def make_app() -> Flask:
    app = Flask("driver")
    app.config.update(SECRET_KEY="test")

    @app.get("/item/<int:item_id>")
    def item(item_id: int) -> str:
        return f"item {item_id}"

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("boom")

    @app.get("/page")
    def page() -> str:
        flash("saved", "success")
        page_shown.send(app)
        return render_template_string("<p>{{ n }}</p>", n=1)

    SignalMetrics(app).count(page_shown)
    return app


def drive(app: Flask, n: int) -> list[int]:
    client = app.test_client()
    paths = ["/item/1", "/item/2", "/page", "/boom", "/missing"]
    statuses = []
    for i in range(n):
        response = client.get(paths[i % len(paths)], headers={"traceparent": TRACEPARENT})
        statuses.append(response.status_code)
    return statuses


def twice() -> dict[str, t.Any]:
    """A second configure_otlp: refused with the fix; metrics alone still allowed."""
    configure_otlp(metrics=False)
    try:
        configure_otlp()
    except RuntimeError as e:
        refused = str(e)
    else:
        refused = ""
    metrics_only = configure_otlp(traces=False)
    return {"refused": refused, "metrics_only": metrics_only.tracer_provider is None}


def main(mode: str, n: int) -> dict[str, t.Any]:
    if mode == "twice":
        return twice()
    app = make_app()
    handle = configure_otlp()
    if mode == "requests":
        statuses = drive(app, n)
        flushed = handle.force_flush(20000)
        scrape = app.test_client().get("/metrics").text
        handle.shutdown()
        return {"statuses": statuses, "flushed": flushed, "metrics": scrape}
    # blocked: an export to a collector that never answers is under way (the
    # test's server has accepted its connection) while the requests are made.
    exporting = threading.Thread(target=handle.force_flush, daemon=True)
    exporting.start()
    sys.stdout.write("exporting\n")
    sys.stdout.flush()
    sys.stdin.readline()  # the test says the collector holds the connection
    statuses = drive(app, n)
    still_exporting = exporting.is_alive()
    exporting.join(60)
    handle.force_flush(20000)
    scrape = app.test_client().get("/metrics").text
    return {"statuses": statuses, "still_exporting": still_exporting, "metrics": scrape}


if __name__ == "__main__":
    app_ = None
    result = main(sys.argv[1], int(sys.argv[2]))
    sys.stdout.write(json.dumps(result) + "\n")
