"""The app and driver of test_otf_parity: one instrumentation, seven requests, JSON out.

Run in a fresh interpreter (``python -c "from tests.compat.parity_app import
main; main('otf')"``) with ``OTEL_SEMCONV_STABILITY_OPT_IN=http``: it
instruments :func:`make_app`'s app with opentelemetry-instrumentation-flask
(``otf``) or with ours (``ours``), sends :data:`REQUESTS` through the test
client and prints one JSON object: per request its status, the spans that
ended and the metric points it changed; then every metric point at the end.
"""

from __future__ import annotations

import json
import sys
import time
import typing as t

from flask import Flask
from flask import Response
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.metrics.export import Sum
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

#: The request headers sent with every request.
HEADERS = {"Host": "shop.test:8080", "User-Agent": "parity/1.0", "X-Tenant-Id": "acme"}

#: Each request: its name in the test, method, path with query, application root.
REQUESTS: dict[str, tuple[str, str, str]] = {
    "route": ("GET", "/items/7?color=red&sig=s3cret", ""),
    "raises": ("GET", "/boom", ""),
    "not_found": ("GET", "/nowhere", ""),
    "streamed": ("GET", "/stream", ""),
    "head": ("HEAD", "/items/7", ""),
    "unknown_method": ("BREW", "/items/7", ""),
    # The app mounted at /shop (SCRIPT_NAME, as a DispatcherMiddleware or a proxy's prefix).
    "mounted": ("GET", "/items/7", "/shop"),
}

#: When the streamed body's generator finished (ns since the epoch), per stream.
STREAM_ENDS: list[int] = []


class Gone(ValueError):
    """The error of ``/boom``: not handled by the app, so a 500."""


def make_app() -> Flask:
    app = Flask(__name__)
    app.testing = False  # a raising view gives a 500, as under a server

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return f"item {item_id}"

    @app.get("/boom")
    def boom() -> str:
        raise Gone("no more")

    @app.get("/stream")
    def stream() -> Response:
        def body() -> t.Iterator[str]:
            try:
                for part in ("a", "b", "c"):
                    time.sleep(0.02)
                    yield part
            finally:
                STREAM_ENDS.append(time.time_ns())

        return Response(body(), mimetype="text/plain")

    return app


def _plain(value: object) -> object:
    """An attribute value as JSON has it (tuples as lists)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _span(span: ReadableSpan) -> dict[str, object]:
    end = span.end_time or 0
    return {
        "name": span.name,
        "kind": span.kind.name,
        "status": span.status.status_code.name,
        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
        # Did the span end after the streamed body was produced (None: no stream)?
        "ended_after_body": end >= STREAM_ENDS[-1] if STREAM_ENDS else None,
    }


Point = dict[str, t.Any]


def _points(reader: InMemoryMetricReader) -> list[Point]:
    """Every metric point now: scope, name, unit, attributes, count/sum or value."""
    points: list[Point] = []
    data = reader.get_metrics_data()
    if data is None:
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    entry: Point = {
                        "scope": scope.scope.name,
                        "name": metric.name,
                        "unit": metric.unit,
                        "attributes": {
                            k: _plain(v) for k, v in sorted((point.attributes or {}).items())
                        },
                    }
                    if isinstance(point, HistogramDataPoint):
                        entry.update(type="histogram", count=point.count, sum=point.sum)
                    elif isinstance(point, NumberDataPoint):
                        kind = "sum" if isinstance(metric.data, Sum) else "gauge"
                        entry.update(type=kind, value=point.value)
                    points.append(entry)
    return points


def _key(point: Point) -> str:
    return json.dumps([point["scope"], point["name"], point["attributes"]], sort_keys=True)


def _changed(before: list[Point], after: list[Point]) -> list[Point]:
    """The points a request changed: histogram counts and sums' values as differences."""
    old = {_key(p): p for p in before}
    changed = []
    for point in after:
        previous = old.get(_key(point))
        delta = dict(point)
        if point["type"] == "histogram":
            delta["count"] = point["count"] - (previous["count"] if previous else 0)
            delta["sum"] = point["sum"] - (previous["sum"] if previous else 0)
            if delta["count"]:
                changed.append(delta)
        else:
            delta["value"] = point["value"] - (previous["value"] if previous else 0)
            if delta["value"]:
                changed.append(delta)
    return changed


def main(which: str) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    app = make_app()
    if which == "otf":
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call]
            app, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
    else:
        from flask_signal_metrics.compat.opentelemetry import SignalMetricsInstrumentor

        SignalMetricsInstrumentor().instrument_app(
            app, tracer_provider=tracer_provider, meter_provider=meter_provider, path=None
        )
    client = app.test_client()
    results: dict[str, dict[str, t.Any]] = {}
    before = _points(reader)
    for name, (method, path, root) in REQUESTS.items():
        STREAM_ENDS.clear()
        exporter.clear()
        response = client.open(
            path, method=method, headers=HEADERS, base_url=f"http://localhost{root}"
        )
        body = response.get_data()  # the whole body, streamed or not
        response.close()
        after = _points(reader)
        results[name] = {
            "status": response.status_code,
            "body": len(body),
            "spans": [_span(s) for s in exporter.get_finished_spans()],
            "metrics": _changed(before, after),
        }
        before = after
    json.dump({"requests": results, "final": before}, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
