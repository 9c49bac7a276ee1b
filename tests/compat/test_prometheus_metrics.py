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


def test_each_instance_has_its_own_registry() -> None:
    one, two = make_app(), make_app()
    first, second = PrometheusMetrics(one), PrometheusMetrics(two)  # no Duplicated timeseries
    assert first.registry is not second.registry
    one.test_client().get("/kept")
    assert value(first.registry, "flask_http_request_total", method="GET", status="200") == 1.0
    assert value(second.registry, "flask_http_request_total", method="GET", status="200") == 0.0


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
