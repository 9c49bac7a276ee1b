"""A prometheus-flask-exporter app under gunicorn, migrated: only the import changed.

The docs' migration guide shows the diff. Run it with several workers::

    PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) gunicorn -w 4 -c examples/pfe_gunicorn.conf.py \\
        examples.pfe_migrated:app
"""

from __future__ import annotations

from flask import Flask
from flask import request

# was: from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics
from flask_signal_metrics.compat.multiprocess import GunicornInternalPrometheusMetrics

metrics = GunicornInternalPrometheusMetrics.for_app_factory(group_by="endpoint")

by_status = metrics.counter(
    "orders_by_status", "Orders by status.", labels={"status": lambda r: r.status_code}
)


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/healthz")
    @metrics.do_not_track()
    def healthz() -> str:
        return "ok"

    @app.get("/orders/<int:number>")
    @by_status
    @metrics.histogram(
        "order_seconds",
        "Order latency.",
        labels={"even": lambda: (request.view_args or {})["number"] % 2 == 0},
    )
    @metrics.gauge("orders_in_progress", "Orders being placed.")
    def order(number: int) -> tuple[str, int]:
        return f"order {number}", 200 if number else 404

    metrics.init_app(app)
    metrics.info("app_info", "Application info", version="1.0.0")
    return app


app = create_app()
