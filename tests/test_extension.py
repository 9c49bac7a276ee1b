from __future__ import annotations

import gc
import typing as t

import pytest
from blinker import Namespace
from flask import Flask
from flask import signals
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import REGISTRY

from flask_signal_metrics import receivers
from flask_signal_metrics import SignalMetrics

from .conftest import make_app
from .conftest import requests_counted
from .conftest import total_requests


def test_app_factory_one_extension_many_apps() -> None:
    from examples.factory import create_app

    first, second = create_app(), create_app({"SIGNAL_METRICS_PATH": "/m"})
    assert first.test_client().get("/hello/a").status_code == 200
    for _ in range(2):
        second.test_client().get("/hello/b")
    body_first = first.test_client().get("/metrics").data.decode()
    body_second = second.test_client().get("/m").data.decode()
    assert 'http_route="/hello/<name>"' in body_first
    line = 'http_server_request_duration_seconds_count{error_type="",http_request_method="GET",'
    line += 'http_response_status_code="200",http_route="/hello/<name>",service="factory-demo",'
    line += 'url_scheme="http"}'
    assert line + " 1.0" in body_first
    assert line + " 2.0" in body_second
    assert second.test_client().get("/metrics").status_code == 404


def test_several_apps_in_one_process_stay_isolated() -> None:
    # The default: each app its own registry, so no "Duplicated timeseries".
    apps = [make_app(f"app{n}") for n in range(3)]
    extension = SignalMetrics()
    for app in apps:
        extension.init_app(app)
    for n, app in enumerate(apps):
        for _ in range(n + 1):
            app.test_client().get("/item/1")
    for n, app in enumerate(apps):
        registry = app.extensions["signal_metrics"].metrics.registry
        assert total_requests(registry) == n + 1


def test_extension_keeps_no_app() -> None:
    app = make_app()
    extension = SignalMetrics(app)
    assert all(value is not app for value in vars(extension).values())


def test_init_app_twice_is_an_error() -> None:
    app = make_app()
    extension = SignalMetrics(app)
    with pytest.raises(RuntimeError, match="already initialised on app 'test_app'"):
        extension.init_app(app)
    with pytest.raises(RuntimeError, match="once per app"):
        SignalMetrics(app)


def test_disabled_connects_nothing_and_registers_no_route() -> None:
    app = make_app()
    app.config["SIGNAL_METRICS_ENABLED"] = False
    SignalMetrics(app)
    assert not signals.request_started.has_receivers_for(app)
    assert app.test_client().get("/metrics").status_code == 404


@pytest.mark.parametrize("path", [None, False, ""])
def test_no_route(registry: CollectorRegistry, path: object) -> None:
    app = make_app()
    SignalMetrics(app, registry=registry, path=path)
    assert app.test_client().get("/metrics").status_code == 404
    # with no metrics route, /metrics is an unknown path like any other
    assert requests_counted(registry, "", 404) == 1


def test_route_taken_is_an_error_before_the_app_changes() -> None:
    app = make_app()
    with pytest.raises(ValueError, match="already routes it to 'aborts'"):
        SignalMetrics(app, path="/abort")
    assert "signal_metrics" not in app.extensions
    assert not signals.request_started.has_receivers_for(app)


def test_set_up_after_a_request_is_an_error_before_the_app_changes(
    registry: CollectorRegistry,
) -> None:
    app = make_app()
    assert app.test_client().get("/item/1").status_code == 200
    rules = len(list(app.url_map.iter_rules()))
    with pytest.raises(RuntimeError, match=r"after it handled a request.*SIGNAL_METRICS_PATH"):
        SignalMetrics(app, registry=registry)
    assert len(list(app.url_map.iter_rules())) == rules
    assert "signal_metrics" not in app.extensions
    assert not signals.request_started.has_receivers_for(app)
    # Without a route to add, it can be set up then.
    served = CollectorRegistry()
    SignalMetrics(app, registry=served, path=None)
    assert app.test_client().get("/item/1").status_code == 200
    assert requests_counted(served, "/item/<int:item_id>", 200) == 1


def test_bad_config_leaves_the_app_untouched() -> None:
    app = make_app()
    app.config["SIGNAL_METRICS_BUCKETS"] = [2, 1]
    rules = len(list(app.url_map.iter_rules()))
    with pytest.raises(ValueError, match="SIGNAL_METRICS_BUCKETS"):
        SignalMetrics(app)
    assert len(list(app.url_map.iter_rules())) == rules
    assert "signal_metrics" not in app.extensions


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"unknown option.*bucket"):
        SignalMetrics(bucket=[1.0])


def test_shared_registry_is_a_clear_error(registry: CollectorRegistry) -> None:
    SignalMetrics(make_app("one"), registry=registry)
    with pytest.raises(ValueError, match="give each its own registry"):
        SignalMetrics(make_app("two"), registry=registry)


def test_receivers_survive_garbage_collection(registry: CollectorRegistry) -> None:
    # blinker holds receivers weakly by default: closures would vanish here.
    app = make_app()
    SignalMetrics(app, registry=registry)
    gc.collect()
    app.test_client().get("/item/1")
    assert requests_counted(registry, "/item/<int:item_id>", 200) == 1


def test_receivers_are_connected_for_the_app_only(registry: CollectorRegistry) -> None:
    app = make_app()
    other = Flask("other")
    SignalMetrics(app, registry=registry)
    for signal, receiver in receivers.RECEIVERS:
        assert any(r is receiver for r in signal.receivers_for(app))
        assert signal.has_receivers_for(app)
        assert not any(r is receiver for r in signal.receivers_for(other))


def test_metrics_include_the_default_registry() -> None:
    # What prometheus-flask-exporter users expect to see: process metrics and
    # their own module-level metrics.
    name = "test_extension_user_metric"
    user = Counter(name, "A user's own metric in the default registry.")
    try:
        user.inc()
        app = make_app()
        SignalMetrics(app)
        body = app.test_client().get("/metrics").data.decode()
        assert f"{name}_total 1.0" in body
        assert "process_cpu_seconds_total" in body
        assert "http_server_active_requests" in body
        quiet = make_app("quiet")
        SignalMetrics(quiet, serve_default_registry=False)
        assert name not in quiet.test_client().get("/metrics").data.decode()
    finally:
        REGISTRY.unregister(user)


def test_registry_given_as_the_default_one_is_served_once() -> None:
    app = make_app()
    SignalMetrics(app, registry=REGISTRY)
    try:
        body = app.test_client().get("/metrics").data.decode()
        assert body.count("# TYPE http_server_active_requests gauge") == 1
    finally:
        for collector in list(REGISTRY._collector_to_names):
            names = REGISTRY._collector_to_names[collector]
            if any(n.startswith(("http_server", "flask_")) for n in names):
                REGISTRY.unregister(collector)


def test_a_registry_passed_in_is_read_once(registry: CollectorRegistry) -> None:
    """It also holds the declared signals' metrics: /metrics and OTLP read it once."""
    from flask_signal_metrics.metrics.readback import readings

    app = make_app()
    SignalMetrics(app, registry=registry)
    app.test_client().get("/item/1")
    state = app.extensions["signal_metrics"]
    assert state.owned == (registry,)
    series = [(r.family, tuple(sorted(r.labels.items()))) for r in readings(state.owned)]
    assert series and len(series) == len(set(series))


@pytest.mark.parametrize("where", ["config", "option"])
def test_the_max_series_of_the_app_caps_the_declared_metrics(where: str) -> None:
    chosen = Namespace().signal("plan-chosen")
    app = make_app()
    options: dict[str, t.Any] = {"serve_default_registry": False}
    if where == "config":
        app.config["SIGNAL_METRICS_MAX_SERIES"] = 3
    else:
        options["max_series"] = 3
    ext = SignalMetrics(**options)
    ext.count(chosen, labels={"plan": lambda sender, **extra: extra["plan"]})
    ext.init_app(app)
    for n in range(10):
        chosen.send(None, plan=f"p{n}")
    text = app.test_client().get("/metrics").text
    series = [row for row in text.splitlines() if row.startswith("flask_signal_plan_chosen_total{")]
    assert len(series) == 4, series  # 3 plans and the overflow series
    assert 'flask_signal_plan_chosen_total{plan="__overflow__"} 7.0' in series
