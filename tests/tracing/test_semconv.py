"""OTEL_SEMCONV_STABILITY_OPT_IN: stable HTTP names by default, the old ones too with http/dup."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

from flask_signal_metrics import SignalMetrics

from ..conftest import make_app
from ..conftest import memory_provider

OLD_SPAN = {
    "http.method": "GET",
    "http.scheme": "http",
    "http.server_name": "localhost",
    "http.host": "localhost",
    "net.host.name": "localhost",
    "net.host.port": 80,
    "http.target": "/item/7?sig=REDACTED&x=1",
    "net.peer.ip": "127.0.0.1",
    "http.flavor": "1.1",
    "http.status_code": 200,
}


@pytest.mark.parametrize(
    ("opt_in", "old"),
    [(None, False), ("http", False), ("database,http/dup", True), ("http/dup", True)],
)
def test_span_and_metric_names_follow_the_opt_in(
    monkeypatch: pytest.MonkeyPatch, opt_in: str | None, old: bool
) -> None:
    if opt_in is None:
        monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    else:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", opt_in)
    tracer_provider, exporter = memory_provider()
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    app = make_app()
    SignalMetrics(
        app,
        registry=CollectorRegistry(),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    assert app.test_client().get("/item/7?sig=secret&x=1").status_code == 200
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    # The stable names always.
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.query"] == "sig=REDACTED&x=1"
    found_old = {k: attributes[k] for k in OLD_SPAN if k in attributes}
    assert found_old == (OLD_SPAN if old else {})
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert ("http.server.duration" in metrics) is old
    assert "http.server.request.duration" in metrics
    if old:
        old_duration = metrics["http.server.duration"]
        assert old_duration.unit == "ms"
        (point,) = old_duration.data.data_points
        assert dict(point.attributes or {}) == {
            "http.method": "GET",
            "http.scheme": "http",
            "http.host": "localhost",
            "http.server_name": "localhost",
            "net.host.name": "localhost",
            "net.host.port": 80,
            "http.flavor": "1.1",
            "http.status_code": 200,
            "http.target": "/item/<int:item_id>",
        }
    meter_provider.shutdown()
    tracer_provider.shutdown()
