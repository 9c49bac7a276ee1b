"""View metrics: declared on views, recorded by the receivers; on helpers, by their wrapper."""

from __future__ import annotations

import gc
import threading
import typing as t
import weakref

import pytest
from flask import Blueprint
from flask import copy_current_request_context
from flask import Flask
from flask import request
from flask.views import MethodView
from prometheus_client import CollectorRegistry

from flask_signal_metrics import exclude
from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.views import exclude_all
from flask_signal_metrics.views import MetricDecorator

from .conftest import value


def make(registry: CollectorRegistry, **options: t.Any) -> tuple[Flask, SignalMetrics]:
    app = Flask(__name__)
    return app, SignalMetrics(app, registry=registry, serve_default_registry=False, **options)


@pytest.mark.parametrize(
    ("kind", "sample", "expected"),
    [
        ("counter", "v_total", 3.0),
        ("histogram", "v_count", 3.0),
        ("summary", "v_count", 3.0),
        ("gauge", "v", 0.0),
    ],
)
def test_each_kind_records_the_views_requests(
    registry: CollectorRegistry, kind: str, sample: str, expected: float
) -> None:
    app, ext = make(registry)
    seen: list[float] = []
    labels = {
        "code": lambda r: r.status_code,
        "kind": lambda: t.cast(dict[str, t.Any], request.view_args)["kind"],
    }
    if kind == "gauge":
        labels = {"kind": lambda: t.cast(dict[str, t.Any], request.view_args)["kind"]}

    @app.get("/v/<kind>")
    @t.cast("MetricDecorator", getattr(ext, kind)("v", "A view metric.", labels))
    def view(kind: str) -> str:
        seen.append(value(registry, "v", kind="a"))
        return "ok"

    client = app.test_client()
    for _ in range(3):
        assert client.get("/v/a").text == "ok"
    wanted = {"kind": "a"} if kind == "gauge" else {"kind": "a", "code": "200"}
    assert value(registry, sample, **wanted) == expected
    if kind == "gauge":
        assert seen == [1.0, 1.0, 1.0]  # in progress while the view runs


def test_a_label_function_that_raises_costs_the_metric_not_the_request(
    registry: CollectorRegistry,
) -> None:
    app, ext = make(registry)

    @app.get("/")
    @ext.counter("bad", "Raises.", {"x": lambda: 1 / 0})
    @ext.counter("good", "Fine.")
    def index() -> str:
        return "ok"

    response = app.test_client().get("/")
    assert (response.status_code, response.text) == (200, "ok")
    assert value(registry, "good_total") == 1.0
    assert value(registry, "bad_total", x="") == 0.0
    errors = "flask_signal_metrics_receiver_errors_total"
    assert value(registry, errors, signal="request-tearing-down") == 1.0
    assert value(registry, "http_server_request_duration_seconds_count",
                 http_request_method="GET", http_route="/", http_response_status_code="200",
                 url_scheme="http", error_type="") == 1.0  # fmt: skip


def test_callable_labels_are_capped(registry: CollectorRegistry) -> None:
    app, ext = make(registry, max_series=3)

    @app.get("/<word>")
    @ext.counter(
        "words", "By word.", {"word": lambda: t.cast(dict[str, t.Any], request.view_args)["word"]}
    )
    def word(word: str) -> str:
        return word

    client = app.test_client()
    for n in range(10):
        client.get(f"/w{n}")
    assert value(registry, "words_total", word="__overflow__") == 7.0
    assert (
        value(registry, "flask_signal_metrics_signal_overflow_total", metric="words_total") == 7.0
    )


def test_register_default_covers_every_view_blueprints_and_later_ones(
    registry: CollectorRegistry,
) -> None:
    app, ext = make(registry)
    by_path = ext.counter("hits", "By path.", {"path": lambda: request.path})
    blueprint = Blueprint("bp", __name__, url_prefix="/bp")

    @blueprint.get("/x")
    def in_blueprint() -> str:
        return "x"

    app.register_blueprint(blueprint)
    ext.register_default(by_path, app=app)

    @app.get("/later")
    async def later() -> str:  # async, and added after register_default
        return "later"

    client = app.test_client()
    for path in ("/bp/x", "/later", "/later", "/metrics"):
        client.get(path)
    assert value(registry, "hits_total", path="/bp/x") == 1.0
    assert value(registry, "hits_total", path="/later") == 2.0
    assert value(registry, "hits_total", path="/metrics") == 0.0


def test_register_default_for_every_app_of_a_factory() -> None:
    ext = SignalMetrics(serve_default_registry=False)
    ext.register_default(ext.counter("all_views", "Every view."))
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.add_url_rule("/", "index", lambda: "ok")
        ext.init_app(app)
        apps.append(app)
    for app in apps:
        app.test_client().get("/")
    text, _ = ext.generate_metrics(None, names=["all_views_total"])
    assert "\nall_views_total 2.0\n" in text


def test_exclude_keeps_the_views_own_metrics_exclude_all_drops_them(
    registry: CollectorRegistry,
) -> None:
    app, ext = make(registry, naming="classic")

    @app.get("/quiet")
    @ext.counter("quiet", "Counted.")
    @exclude
    def quiet() -> str:
        return "q"

    @app.get("/silent")
    @ext.counter("silent", "Never counted.")
    @ext.gauge("silent_now", "Never up.")
    @exclude_all
    def silent() -> str:
        return "s"

    client = app.test_client()
    client.get("/quiet")
    client.get("/silent")
    assert value(registry, "quiet_total") == 1.0
    assert value(registry, "silent_total") == 0.0
    assert value(registry, "silent_now") == 0.0
    assert value(registry, "flask_http_request_total", method="GET", status="200") == 0.0


def test_a_decorated_helper_is_recorded_per_call(registry: CollectorRegistry) -> None:
    app, ext = make(registry)

    @ext.histogram("helper_seconds", "A helper.", {"code": lambda r: getattr(r, "status_code", r)})
    def helper() -> int:
        return 201

    @app.get("/")
    def index() -> tuple[str, int]:
        return "made", helper() + helper() - 201

    assert app.test_client().get("/").status_code == 201
    # Inside a request the labels see the request's response; outside, the result.
    assert value(registry, "helper_seconds_count", code="201") == 2.0
    assert helper() == 201
    assert value(registry, "helper_seconds_count", code="201") == 3.0


def test_a_method_view_method_is_recorded_with_the_response(registry: CollectorRegistry) -> None:
    app, ext = make(registry)

    class Items(MethodView):
        @ext.counter("items", "By status.", {"status": lambda r: r.status_code})
        def get(self) -> tuple[str, int]:
            return "none", 404

    app.add_url_rule("/items", view_func=Items.as_view("items"))
    app.test_client().get("/items")
    assert value(registry, "items_total", status="404") == 1.0


def test_a_raising_view_records_a_500(registry: CollectorRegistry) -> None:
    app, ext = make(registry)
    app.testing = False

    @app.get("/boom")
    @ext.summary("boom", "Raises.", {"status": lambda r: r.status_code})
    def boom() -> str:
        raise RuntimeError("boom")

    assert app.test_client().get("/boom").status_code == 500
    assert value(registry, "boom_count", status="500") == 1.0


def test_constant_labels_are_exported_at_zero(registry: CollectorRegistry) -> None:
    _, ext = make(registry)
    ext.counter("ready", "Constant.", {"tier": 1})
    ext.counter("lazy", "Constant.", {"tier": 1}, initial=False)
    assert registry.get_sample_value("ready_total", {"tier": "1"}) == 0.0
    assert registry.get_sample_value("lazy_total", {"tier": "1"}) is None


def test_info_is_a_gauge_set_to_one(registry: CollectorRegistry) -> None:
    _, ext = make(registry)
    series = ext.info("build", "The build.", {"version": "1.2", "major": 1})
    assert value(registry, "build", version="1.2", major="1") == 1.0
    series.set(5)
    assert value(registry, "build", version="1.2", major="1") == 5.0


@pytest.mark.parametrize(
    ("call", "error", "fix"),
    [
        (lambda e: e.counter("1bad", "x"), ValueError, "Prometheus metric name"),
        (lambda e: e.counter("c", "x", ("a", "b")), TypeError, "dict of label name"),
        (lambda e: e.counter("c", "x", {"le": 1}), ValueError, "not 'le'"),
        (lambda e: e.histogram("h", "x", buckets=[2, 1]), ValueError, "buckets"),
        (lambda e: e.summary("s", "x", quantiles=[0.5]), TypeError, "unexpected keyword"),
        (lambda e: e.register_default(lambda f: f), TypeError, r"counter\(\), histogram\(\)"),
    ],
)
def test_bad_declarations_fail_at_once(
    registry: CollectorRegistry, call: t.Any, error: type[Exception], fix: str
) -> None:
    _, ext = make(registry)
    with pytest.raises(error, match=fix):
        call(ext)


def test_gauges_come_down_when_requests_overlap(registry: CollectorRegistry) -> None:
    app, ext = make(registry)
    inside = threading.Barrier(3, timeout=10)

    @app.get("/slow")
    @ext.gauge("slow_now", "In progress.")
    def slow() -> str:
        inside.wait()  # both requests in progress, and the test
        inside.wait()
        return "done"

    threads = [threading.Thread(target=app.test_client().get, args=("/slow",)) for _ in "ab"]
    for thread in threads:
        thread.start()
    inside.wait()
    assert value(registry, "slow_now") == 2.0
    inside.wait()
    for thread in threads:
        thread.join(10)
    assert value(registry, "slow_now") == 0.0


def test_a_request_with_view_metrics_leaves_no_cycle(registry: CollectorRegistry) -> None:
    """Its record is let go at the end: the request is freed without the garbage collector."""
    app, ext = make(registry)
    seen: list[weakref.ref[t.Any]] = []

    @app.get("/")
    @ext.counter("plain", "Counted.")
    def index() -> str:
        seen.append(weakref.ref(request._get_current_object()))  # type: ignore[attr-defined]
        return "ok"

    client = app.test_client()
    gc.disable()
    try:
        for _ in range(3):  # the first requests go the whole way, the last one step
            client.get("/")
        assert [ref() for ref in seen] == [None, None, None]
    finally:
        gc.enable()
    assert value(registry, "plain_total") == 3.0


def test_register_default_for_every_app_applies_to_apps_already_serving() -> None:
    ext = SignalMetrics(serve_default_registry=False)
    app = Flask("serving")
    app.add_url_rule("/", "index", lambda: "ok")
    ext.init_app(app)
    client = app.test_client()
    client.get("/")  # its rule's view metrics are worked out: none
    ext.register_default(ext.counter("late_views", "Registered late."))
    client.get("/")
    text, _ = ext.generate_metrics(None, names=["late_views_total"])
    assert "\nlate_views_total 1.0\n" in text


def test_a_helper_records_nothing_in_an_excluded_request(registry: CollectorRegistry) -> None:
    app, ext = make(registry, exclude=["/skipped"])

    def x() -> str:
        return "x"

    helper = ext.counter("helper_calls", "Calls.")(x)
    app.add_url_rule("/silent", "silent", exclude_all(lambda: helper()))
    app.add_url_rule("/skipped", "skipped", lambda: helper())
    app.add_url_rule("/counted", "counted", lambda: helper())
    client = app.test_client()
    for path in ("/silent", "/skipped", "/counted"):
        assert client.get(path).text == "x"
    assert value(registry, "helper_calls_total") == 1.0


def test_a_helper_in_a_copied_context_is_the_requests(registry: CollectorRegistry) -> None:
    """Recorded at the request's end with its response, not at the copy's with a 500."""
    app, ext = make(registry)
    helper = ext.counter("copied_calls", "Calls.", {"code": lambda r: r.status_code})(lambda: None)

    @app.get("/thread")
    def in_a_thread() -> tuple[str, int]:
        worker = threading.Thread(target=copy_current_request_context(helper))
        worker.start()
        worker.join(10)
        return "made", 201

    assert app.test_client().get("/thread").status_code == 201
    assert value(registry, "copied_calls_total", code="201") == 1.0
    assert value(registry, "copied_calls_total", code="500") == 0.0


@pytest.mark.parametrize("enabled", [False, None], ids=["disabled", "no-extension"])
def test_a_helper_without_our_receivers_records_at_once_and_leaves_no_cycle(
    registry: CollectorRegistry, enabled: bool | None
) -> None:
    ext = SignalMetrics(registry=registry, serve_default_registry=False, enabled=False)
    app = Flask(__name__)
    if enabled is not None:
        ext.init_app(app)

    def ok() -> str:
        return "ok"

    helper = ext.counter("lonely_calls", "Calls.")(ok)
    seen: list[weakref.ref[t.Any]] = []

    @app.get("/")
    def index() -> str:
        seen.append(weakref.ref(request._get_current_object()))  # type: ignore[attr-defined]
        return helper()

    gc.disable()
    try:
        app.test_client().get("/")
        assert [ref() for ref in seen] == [None]
    finally:
        gc.enable()
    assert value(registry, "lonely_calls_total") == 1.0
