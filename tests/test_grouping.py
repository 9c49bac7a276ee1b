"""prometheus-flask-exporter's options on the request metrics: grouping, prefix, summary, late."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from flask import Request
from prometheus_client import CollectorRegistry

from flask_signal_metrics import SignalMetrics

from .conftest import value


def classic(registry: CollectorRegistry, **options: t.Any) -> tuple[Flask, SignalMetrics]:
    app = Flask(__name__)

    @app.get("/items/<int:item>")
    def item(item: int) -> str:
        return str(item)

    ext = SignalMetrics(
        app, registry=registry, naming="classic", serve_default_registry=False, **options
    )
    return app, ext


def kind(request: Request) -> str:
    return request.args.get("kind", "none")


def broken(request: Request) -> str:
    raise LookupError("no kind")


@pytest.mark.parametrize(
    ("group_by", "label", "values"),
    [
        ("route", "path", {"/items/<int:item>": 3.0}),
        ("url_rule", "url_rule", {"/items/<int:item>": 3.0}),
        ("endpoint", "endpoint", {"item": 3.0}),
        ("path", "path", {"/items/1": 2.0, "/items/2": 1.0}),
        ("full_path", "full_path", {"/items/1?kind=a": 1.0, "/items/1?": 1.0, "/items/2?": 1.0}),
        (kind, "kind", {"a": 1.0, "none": 2.0}),
        (broken, "broken", {"_OTHER": 3.0}),
    ],
    ids=["route", "url_rule", "endpoint", "path", "full_path", "function", "raising-function"],
)
def test_group_by_fills_the_route_label(
    registry: CollectorRegistry, group_by: object, label: str, values: dict[str, float]
) -> None:
    app, _ = classic(registry, group_by=group_by)
    client = app.test_client()
    for path in ("/items/1?kind=a", "/items/1", "/items/2"):
        assert client.get(path).status_code == 200
    duration = "flask_http_request_duration_seconds_count"
    for found, count in values.items():
        labels = {"method": "GET", label: found, "status": "200"}
        assert value(registry, duration, **labels) == count, (found, labels)
    errors = value(registry, "flask_signal_metrics_receiver_errors_total", signal="request-started")
    assert errors == (3.0 if group_by is broken else 0.0)


def test_a_raw_path_grouping_is_capped(registry: CollectorRegistry) -> None:
    app, _ = classic(registry, group_by="path", max_series=5)
    client = app.test_client()
    for n in range(50):  # a path scan
        client.get(f"/items/{n}")
    overflow = {"method": "__overflow__", "path": "__overflow__", "status": "__overflow__"}
    assert value(registry, "flask_http_request_duration_seconds_count", **overflow) == 45.0
    series = registry.get_sample_value
    assert (
        series("flask_http_request_duration_seconds_count", {**overflow, "path": "/items/49"})
        is None
    )


@pytest.mark.parametrize(("prefix", "start"), [("www", "www_"), ("", "")])
def test_the_prefix_names_the_request_metrics(
    registry: CollectorRegistry, prefix: str, start: str
) -> None:
    app, _ = classic(registry, prefix=prefix)
    app.test_client().get("/items/1")
    assert value(registry, f"{start}http_request_total", method="GET", status="200") == 1.0
    labels = {"method": "GET", "path": "/items/<int:item>", "status": "200"}
    assert value(registry, f"{start}http_request_duration_seconds_count", **labels) == 1.0
    assert value(registry, f"{start}exporter_info", version=_version()) == 1.0
    if prefix:
        assert (
            registry.get_sample_value(
                "flask_http_request_total", {"method": "GET", "status": "200"}
            )
            is None
        )


def _version() -> str:
    from flask_signal_metrics import __version__

    return __version__


def test_latency_as_a_summary(registry: CollectorRegistry) -> None:
    app, _ = classic(registry, latency="summary")
    app.test_client().get("/items/1")
    labels = {"method": "GET", "path": "/items/<int:item>", "status": "200"}
    assert value(registry, "flask_http_request_duration_seconds_count", **labels) == 1.0
    assert value(registry, "flask_http_request_duration_seconds_sum", **labels) > 0
    buckets = [
        s for m in registry.collect() for s in m.samples if s.name.endswith("_seconds_bucket")
    ]
    assert [s for s in buckets if s.name.startswith("flask_http")] == []


def test_defaults_exported_late_with_other_options(registry: CollectorRegistry) -> None:
    app, ext = classic(registry, export_defaults=False)
    client = app.test_client()
    client.get("/items/1")
    assert (
        registry.get_sample_value("flask_http_request_total", {"method": "GET", "status": "200"})
        is None
    )
    ext.export_defaults(app, prefix="late", group_by="endpoint")
    client.get("/items/1")
    client.get("/items/2")
    labels = {"method": "GET", "endpoint": "item", "status": "200"}
    assert value(registry, "late_http_request_duration_seconds_count", **labels) == 2.0
    with pytest.raises(RuntimeError, match="once"):
        ext.export_defaults(app)


def test_the_metrics_on_a_path_registered_later(registry: CollectorRegistry) -> None:
    app, ext = classic(registry, path=None)
    ext.register_endpoint("/internal/metrics", app)
    client = app.test_client()
    assert client.get("/metrics").status_code == 404
    client.get("/items/1")
    response = client.get("/internal/metrics?name[]=flask_http_request_total")
    assert response.status_code == 200
    assert 'flask_http_request_total{method="GET",status="200"} 1.0' in response.text
    assert "flask_exporter_info" not in response.text
    text, content_type = ext.generate_metrics(app, names=["flask_exporter_info"])
    assert text.count("flask_exporter_info{") == 1 and content_type.startswith("text/plain")
    # The metrics route's own requests are not measured, on either path.
    assert value(registry, "flask_http_request_total", method="GET", status="200") == 1.0


@pytest.mark.parametrize(
    ("options", "error", "fix"),
    [
        ({"group_by": "host"}, ValueError, "a function of the request"),
        ({"group_by": lambda r: r.path}, ValueError, "invalid label name"),
        ({"group_by": 3}, TypeError, "SIGNAL_METRICS_GROUP_BY"),
        ({"prefix": "1x"}, ValueError, "start of a metric name"),
        ({"latency": "gauge"}, ValueError, "'histogram' or 'summary'"),
    ],
)
def test_bad_classic_options_fail_at_configuration(
    registry: CollectorRegistry, options: dict[str, t.Any], error: type[Exception], fix: str
) -> None:
    with pytest.raises(error, match=fix):
        classic(registry, **options)


@pytest.mark.parametrize(
    "option", [{"group_by": "endpoint"}, {"prefix": "www"}, {"latency": "summary"}]
)
def test_classic_options_need_the_classic_naming(option: dict[str, t.Any]) -> None:
    with pytest.raises(ValueError, match="SIGNAL_METRICS_NAMING"):
        SignalMetrics(Flask(__name__), **option)


def test_a_summary_is_refused_with_several_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from flask_signal_metrics import building

    monkeypatch.setattr(building, "multiprocess", lambda: True)
    with pytest.raises(ValueError, match="keep 'histogram'"):
        SignalMetrics(Flask(__name__), naming="classic", latency="summary")


def test_a_summary_exported_late_is_refused_with_several_workers(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, ext = classic(registry, export_defaults=False)
    from flask_signal_metrics import building

    monkeypatch.setattr(building, "multiprocess", lambda: True)
    with pytest.raises(ValueError, match="keep 'histogram'"):
        ext.export_defaults(app, latency="summary")
