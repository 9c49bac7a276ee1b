from __future__ import annotations

from flask import Flask
from prometheus_client import CollectorRegistry

from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.labels import OVERFLOW

from ..conftest import in_flight
from ..conftest import make_app
from ..conftest import requests_counted
from ..conftest import total_requests
from ..conftest import value


def _series(registry: CollectorRegistry) -> int:
    return sum(len(metric.samples) for metric in registry.collect())


def test_unknown_paths_add_no_series(client: object, registry: CollectorRegistry) -> None:
    from flask.testing import FlaskClient

    assert isinstance(client, FlaskClient)
    client.get("/first-unknown")
    before = _series(registry)
    for n in range(20_000):
        client.get(f"/scan/{n}/wp-admin.php?id={n}")
    assert _series(registry) == before
    assert requests_counted(registry, "", 404) == 20_001


def _many_routes(n: int) -> Flask:
    app = make_app()
    for i in range(n):
        app.add_url_rule(f"/r{i}", f"r{i}", lambda: "ok")
    return app


def test_cap_folds_new_label_sets_into_one_overflow_series(registry: CollectorRegistry) -> None:
    app = _many_routes(10)
    SignalMetrics(app, registry=registry, max_series=4)
    client = app.test_client()
    for i in range(10):
        client.get(f"/r{i}")
    for i in range(10):
        client.get(f"/r{i}")
    assert total_requests(registry) == 20  # nothing lost
    overflow = {name: OVERFLOW for name in
                ("http_request_method", "http_route", "http_response_status_code", "url_scheme",
                 "error_type")}  # fmt: skip
    assert value(registry, "http_server_request_duration_seconds_count", **overflow) == 12
    for name in ("http_server_request_duration_seconds", "http_server_request_body_size_bytes"):
        assert value(registry, "flask_signal_metrics_series_overflow_total", metric=name) == 12
    # 4 label sets, plus the overflow one
    durations = [m for m in registry.collect() if m.name == "http_server_request_duration_seconds"]
    assert len([s for s in durations[0].samples if s.name.endswith("_count")]) == 5
    assert in_flight(registry) == 0


def test_cap_applies_to_flash_categories(registry: CollectorRegistry) -> None:
    from flask import flash

    app = make_app()
    SignalMetrics(app, registry=registry, max_series=3)

    @app.get("/flash/<category>")
    def flash_view(category: str) -> str:
        flash("hi", category)  # a user-controlled category: a cardinality bomb
        return "ok"

    for n in range(10):
        app.test_client().get(f"/flash/c{n}")
    assert value(registry, "flask_flashed_messages_total", category=OVERFLOW) == 7
    assert (
        value(
            registry,
            "flask_signal_metrics_series_overflow_total",
            metric="flask_flashed_messages_total",
        )
        == 7
    )


def test_the_self_metrics_are_not_capped(registry: CollectorRegistry) -> None:
    """Their label values are the extension's own: a small cap never folds them."""
    SignalMetrics(make_app(), registry=registry, max_series=1)
    for name in (
        "flask_signal_metrics_receiver_errors_total",
        "flask_signal_metrics_otlp_dropped_total",
    ):
        assert value(registry, "flask_signal_metrics_series_overflow_total", metric=name) == 0
    errors = [m for m in registry.collect() if m.name == "flask_signal_metrics_receiver_errors"]
    assert len(errors[0].samples) >= 7  # one per signal, exported at 0


def test_a_label_value_no_encoding_takes_breaks_no_scrape(registry: CollectorRegistry) -> None:
    """A lone surrogate (a JSON "\\udcff", say) in a user-given label value."""
    from flask import flash
    from flask import request

    app = make_app()
    SignalMetrics(app, registry=registry)

    @app.post("/flash")
    def flash_view() -> str:
        flash("hi", request.get_json()["category"])
        return "ok"

    client = app.test_client()
    sent = b'{"category": "x\\udcff"}'
    assert client.post("/flash", data=sent, content_type="application/json").status_code == 200
    for accept in ("text/plain", "application/openmetrics-text"):
        scrape = client.get("/metrics", headers={"Accept": accept})
        assert scrape.status_code == 200
        assert 'flask_flashed_messages_total{category="x\ufffd"} 1.0' in scrape.text


def test_classic_naming_is_prometheus_flask_exporter_compatible(
    registry: CollectorRegistry,
) -> None:
    app = make_app()
    SignalMetrics(app, registry=registry, naming="classic")
    client = app.test_client()
    for path in ["/item/1", "/item/2", "/boom", "/nope"]:
        client.get(path)
    labels = {"method": "GET", "path": "/item/<int:item_id>", "status": "200"}
    assert value(registry, "flask_http_request_duration_seconds_count", **labels) == 2
    assert value(registry, "flask_http_request_total", method="GET", status="200") == 2
    assert value(registry, "flask_http_request_total", method="GET", status="404") == 1
    assert value(registry, "flask_http_request_exceptions_total", method="GET", status="500") == 1
    assert (
        value(
            registry,
            "flask_http_request_duration_seconds_count",
            method="GET",
            path="",
            status="404",
        )
        == 1
    )
    assert value(registry, "flask_exporter_info", version=_version()) == 1
    names = {m.name for m in registry.collect()}
    assert "http_server_request_duration_seconds" not in names
    assert {"http_server_active_requests", "http_server_request_body_size_bytes",
            "flask_request_exceptions", "flask_flashed_messages"} <= names  # fmt: skip


def _version() -> str:
    from flask_signal_metrics import __version__

    return __version__


def test_otel_naming_info(registry: CollectorRegistry, app: Flask) -> None:
    assert value(registry, "flask_signal_metrics_info", version=_version()) == 1


def test_buckets_and_static_labels(registry: CollectorRegistry) -> None:
    app = make_app()
    SignalMetrics(
        app, registry=registry, buckets=[0.5, 1.0], labels={"service": "shop", "env": "ci"}
    )
    app.test_client().get("/item/1")
    [duration] = [m for m in registry.collect() if m.name == "http_server_request_duration_seconds"]
    les = [s.labels["le"] for s in duration.samples if s.name.endswith("_bucket")]
    assert les == ["0.5", "1.0", "+Inf"]
    assert all(s.labels["service"] == "shop" and s.labels["env"] == "ci" for s in duration.samples)
    for metric in registry.collect():
        for sample in metric.samples:
            assert sample.labels.get("service") == "shop", sample
