"""PrometheusMetrics: where its mapping onto SignalMetrics keeps PFE's semantics, or ours."""

from __future__ import annotations

import gc

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_signal_metrics.compat import NO_PREFIX
from flask_signal_metrics.compat import PrometheusMetrics

from ..conftest import value


def make_app() -> Flask:
    app = Flask(__name__)
    for path in ("/exc", "/excluded", "/x/exc", "/kept"):
        app.add_url_rule(path, path, lambda: "ok")
    return app


def test_excluded_paths_match_from_the_start_as_re_match() -> None:
    registry = CollectorRegistry()
    app = make_app()
    PrometheusMetrics(app, registry=registry, excluded_paths="/exc")
    client = app.test_client()
    for path in ("/exc", "/excluded", "/x/exc", "/kept"):
        client.get(path)
    duration = "flask_http_request_duration_seconds_count"
    counted = {
        path: value(registry, duration, method="GET", path=path, status="200")
        for path in ("/exc", "/excluded", "/x/exc", "/kept")
    }
    assert counted == {"/exc": 0.0, "/excluded": 0.0, "/x/exc": 1.0, "/kept": 1.0}


def test_the_app_is_held_weakly() -> None:
    app = make_app()
    metrics = PrometheusMetrics(app, registry=CollectorRegistry())
    assert metrics.app is app
    del app
    gc.collect()
    assert metrics.app is None


def _count(app: Flask) -> float:
    text = app.test_client().get("/metrics?name[]=flask_http_request_total").text
    found = [line for line in text.splitlines() if line.startswith("flask_http_request_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in found)


def test_without_a_registry_each_app_has_its_own() -> None:
    """One instance, an app factory, two apps: no "Duplicated timeseries", no shared counts."""
    metrics = PrometheusMetrics.for_app_factory()
    one, two = make_app(), make_app()
    metrics.init_app(one)
    metrics.init_app(two)
    one.test_client().get("/kept")
    assert (_count(one), _count(two)) == (1.0, 0.0)
    PrometheusMetrics(make_app())  # and a second instance beside it


def test_the_default_labels_win_over_a_metrics_own(registry: CollectorRegistry) -> None:
    app = make_app()
    metrics = PrometheusMetrics(app, registry=registry, default_labels={"app": "shop"})
    view = app.view_functions["/kept"]
    app.view_functions["/kept"] = metrics.counter("mine", "Own.", labels={"app": "mine"})(view)
    app.test_client().get("/kept")
    assert value(registry, "mine_total", app="shop") == 1.0


def test_excluded_paths_keep_their_leading_flags(registry: CollectorRegistry) -> None:
    app = make_app()
    PrometheusMetrics(app, registry=registry, excluded_paths=["(?i)/KEPT"])
    app.test_client().get("/kept")
    assert value(registry, "flask_http_request_total", method="GET", status="200") == 0.0


def test_export_defaults_on_an_app_never_set_up_says_so(registry: CollectorRegistry) -> None:
    app = make_app()
    metrics = PrometheusMetrics(app, registry=registry, export_defaults=False)
    with pytest.raises(RuntimeError, match="not initialised"):
        metrics.export_defaults(app=Flask("other"))
    metrics.export_defaults()
    metrics.export_defaults()  # a second time: nothing, as with prometheus-flask-exporter
    app.test_client().get("/kept")
    assert value(registry, "flask_http_request_total", method="GET", status="200") == 1.0


def test_group_by_any_request_attribute_names_the_label() -> None:
    registry = CollectorRegistry()
    app = make_app()
    PrometheusMetrics(app, registry=registry, group_by="host", defaults_prefix=NO_PREFIX)
    app.test_client().get("/kept")
    labels = {"method": "GET", "host": "localhost", "status": "200"}
    assert value(registry, "http_request_duration_seconds_count", **labels) == 1.0


def test_deprecated_arguments_warn_as_pfe_does() -> None:
    with pytest.warns(DeprecationWarning, match="group_by_endpoint"):
        PrometheusMetrics(make_app(), registry=CollectorRegistry(), group_by_endpoint=True)
    with pytest.warns(DeprecationWarning, match="static_labels"):
        PrometheusMetrics(make_app(), registry=CollectorRegistry(), static_labels={"a": 1})


def test_tls_on_the_metrics_port_is_refused_with_the_alternative() -> None:
    metrics = PrometheusMetrics(make_app(), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="proxy"):
        metrics.start_http_server(0, ssl={"cert": "c", "key": "k"})


def test_a_function_default_label_is_refused_naming_the_alternative() -> None:
    with pytest.raises(TypeError, match="register_default"):
        PrometheusMetrics(make_app(), registry=CollectorRegistry(), default_labels={"m": len})
