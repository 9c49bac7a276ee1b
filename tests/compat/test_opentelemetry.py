"""SignalMetricsInstrumentor: opentelemetry-instrumentation-flask's instrumentor, on ours."""

from __future__ import annotations

import contextlib
import logging
import typing as t

import flask
import pytest
from flask import Flask
from flask import signals
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.propagators import set_global_response_propagator
from opentelemetry.instrumentation.propagators import TraceResponsePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span

from flask_signal_metrics import receivers
from flask_signal_metrics.compat.opentelemetry import SignalMetricsInstrumentor

from ..conftest import memory_provider
from ..conftest import requests_counted
from ..conftest import value


class Traced(t.NamedTuple):
    provider: TracerProvider
    exporter: InMemorySpanExporter


@pytest.fixture
def sdk() -> t.Iterator[Traced]:
    provider, exporter = memory_provider()
    yield Traced(provider, exporter)
    provider.shutdown()


def make_app() -> Flask:
    app = flask.Flask(__name__)  # looked up now: instrument() replaces it

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return f"item {item_id}"

    @app.get("/api/healthz")
    def healthz() -> str:
        return "ok"

    return app


@contextlib.contextmanager
def responding(propagator: TraceResponsePropagator) -> t.Iterator[None]:
    """``propagator`` as the global response propagator, none again after."""
    set_global_response_propagator(propagator)  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        set_global_response_propagator(None)  # type: ignore[no-untyped-call]


def registry_of(app: Flask) -> t.Any:
    return app.extensions["signal_metrics"].metrics.registry


def test_hooks_are_called_with_the_span_environ_status_and_headers(sdk: Traced) -> None:
    seen: list[tuple[object, ...]] = []

    def request_hook(span: Span, environ: dict[str, t.Any]) -> None:
        seen.append(("request", span.is_recording(), environ["PATH_INFO"]))
        span.set_attribute("app.tenant", "acme")

    def response_hook(span: Span, status: str, headers: list[tuple[str, str]]) -> None:
        seen.append(("response", span.is_recording(), status, dict(headers)["Content-Type"]))

    app = make_app()
    SignalMetricsInstrumentor().instrument_app(
        app, request_hook=request_hook, response_hook=response_hook, tracer_provider=sdk.provider
    )
    response = app.test_client().get("/items/7")
    assert (response.status_code, response.text) == (200, "item 7")
    assert seen == [
        ("request", True, "/items/7"),
        ("response", True, "200 OK", "text/html; charset=utf-8"),
    ]
    (span,) = sdk.exporter.get_finished_spans()
    assert (span.name, (span.attributes or {})["app.tenant"]) == (
        "GET /items/<int:item_id>",
        "acme",
    )
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.schema_url == "https://opentelemetry.io/schemas/1.21.0"


@pytest.mark.parametrize("which", ["request_hook", "response_hook"])
def test_a_raising_hook_is_counted_and_breaks_nothing(sdk: Traced, which: str) -> None:
    def hook(*args: object) -> None:
        raise RuntimeError("hook bug")

    app = make_app()
    SignalMetricsInstrumentor().instrument_app(
        app, tracer_provider=sdk.provider, **t.cast("dict[str, t.Any]", {which: hook})
    )
    response = app.test_client().get("/items/7")
    assert (response.status_code, response.text) == (200, "item 7")
    signal = {
        "request_hook": signals.request_started,
        "response_hook": signals.request_tearing_down,
    }
    errors = value(
        registry_of(app),
        "flask_signal_metrics_receiver_errors_total",
        signal=signal[which].name,
    )
    assert errors == 1.0
    assert [s.name for s in sdk.exporter.get_finished_spans()] == ["GET /items/<int:item_id>"]
    assert requests_counted(registry_of(app), "/items/<int:item_id>", 200) == 1.0


@pytest.mark.parametrize(
    ("argument", "environ", "excluded"),
    [
        ("healthz", {}, True),  # searched anywhere in the URL
        (None, {"OTEL_PYTHON_FLASK_EXCLUDED_URLS": "healthz,unused"}, True),
        (None, {"OTEL_PYTHON_EXCLUDED_URLS": "localhost/api"}, True),  # the full URL
        # The Flask variable wins over the general one, the argument over both.
        (
            None,
            {"OTEL_PYTHON_FLASK_EXCLUDED_URLS": "x9", "OTEL_PYTHON_EXCLUDED_URLS": "healthz"},
            False,
        ),
        ("", {"OTEL_PYTHON_FLASK_EXCLUDED_URLS": "healthz"}, False),
        ("^/api", {}, False),  # the URL starts with the scheme
    ],
)
def test_excluded_urls_make_no_span_and_no_metric(
    sdk: Traced,
    monkeypatch: pytest.MonkeyPatch,
    argument: str | None,
    environ: dict[str, str],
    excluded: bool,
) -> None:
    for name in ("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"):
        monkeypatch.delenv(name, raising=False)
    for name, setting in environ.items():
        monkeypatch.setenv(name, setting)
    app = make_app()
    SignalMetricsInstrumentor().instrument_app(
        app, tracer_provider=sdk.provider, excluded_urls=argument
    )
    client = app.test_client()
    assert client.get("/api/healthz?probe=1").text == "ok"
    assert client.get("/items/1").text == "item 1"
    names = [s.name for s in sdk.exporter.get_finished_spans()]
    expected = (
        ["GET /items/<int:item_id>"]
        if excluded
        else ["GET /api/healthz", "GET /items/<int:item_id>"]
    )
    assert names == expected
    assert requests_counted(registry_of(app), "/api/healthz", 200) == (0.0 if excluded else 1.0)
    assert requests_counted(registry_of(app), "/items/<int:item_id>", 200) == 1.0


def test_uninstrument_app_disconnects_every_receiver_and_removes_the_route(sdk: Traced) -> None:
    app = make_app()
    instrumentor = SignalMetricsInstrumentor()
    instrumentor.instrument_app(app, tracer_provider=sdk.provider)
    client = app.test_client()
    assert client.get("/metrics").status_code == 200
    assert client.get("/items/1").text == "item 1"
    ours = {receiver for _, receiver in receivers.RECEIVERS}
    connected = {r for signal, _ in receivers.RECEIVERS for r in signal.receivers_for(app)}
    assert connected >= ours
    instrumentor.uninstrument_app(app)
    connected = {r for signal, _ in receivers.RECEIVERS for r in signal.receivers_for(app)}
    assert not connected & ours
    assert client.get("/metrics").status_code == 404
    assert client.get("/items/3").text == "item 3"  # the app's own routes, as before
    assert "signal-metrics" not in app.cli.commands
    assert len(sdk.exporter.get_finished_spans()) == 1  # /items/1's, before
    # And again (without a route: Flask takes none once it has served).
    instrumentor.instrument_app(app, tracer_provider=sdk.provider, path=None)
    assert client.get("/items/4").text == "item 4"
    assert len(sdk.exporter.get_finished_spans()) == 2


def test_instrument_makes_every_later_app_instrumented(sdk: Traced) -> None:
    original = flask.Flask
    instrumentor = SignalMetricsInstrumentor()
    instrumentor.instrument(tracer_provider=sdk.provider)
    try:
        app = make_app()
        assert type(app) is not original and isinstance(app, original)
        assert app.test_client().get("/items/2").text == "item 2"
        assert app.test_client().get("/metrics").status_code == 404  # no route: see _instrument
    finally:
        instrumentor.uninstrument()
    assert flask.Flask is original
    assert "signal_metrics" not in make_app().extensions
    # /metrics is the app's 404 (a span without a route), not ours.
    assert [s.name for s in sdk.exporter.get_finished_spans()] == [
        "GET /items/<int:item_id>",
        "GET",
    ]


def test_the_apps_own_set_up_replaces_the_instrumentors(sdk: Traced) -> None:
    from flask_signal_metrics import SignalMetrics

    instrumentor = SignalMetricsInstrumentor()
    instrumentor.instrument(tracer_provider=sdk.provider)
    try:
        app = make_app()
        SignalMetrics(app, path="/stats")  # no "already initialised"
        assert app.test_client().get("/stats").status_code == 200
    finally:
        instrumentor.uninstrument()


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"enable_commenter": True}, "opentelemetry-instrumentation-sqlalchemy"),
        ({"enable_commenter": True, "commenter_options": {"route": 1}}, "sqlalchemy"),
        ({"meter_provider": object()}, "meter_provider must be an OpenTelemetry MeterProvider"),
        ({"excluded_urls": "(unclosed"}, "SIGNAL_METRICS_EXCLUDED_URLS"),
        ({"request_hook": "not callable"}, "SIGNAL_METRICS_REQUEST_HOOK"),
    ],
)
def test_what_is_not_taken_is_refused_naming_the_alternative(
    arguments: dict[str, t.Any], named: str
) -> None:
    app = make_app()
    with pytest.raises((TypeError, ValueError), match=named):
        SignalMetricsInstrumentor().instrument_app(app, **arguments)
    assert "signal_metrics" not in app.extensions


def test_instrumenting_twice_warns_and_keeps_one(
    sdk: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    SignalMetricsInstrumentor().instrument_app(app, tracer_provider=sdk.provider)
    with caplog.at_level(logging.WARNING, "flask_signal_metrics"):
        SignalMetricsInstrumentor().instrument_app(app, tracer_provider=sdk.provider)
    assert "already instrumented" in caplog.text
    app.test_client().get("/items/1")
    assert len(sdk.exporter.get_finished_spans()) == 1


def test_with_opentelemetry_instrumentation_flask_too_one_span_per_request(
    sdk: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=sdk.provider)  # type: ignore[no-untyped-call]
    try:
        SignalMetricsInstrumentor().instrument_app(app, tracer_provider=sdk.provider)
        with caplog.at_level(logging.WARNING, "flask_signal_metrics"):
            assert app.test_client().get("/items/5").text == "item 5"
        spans = sdk.exporter.get_finished_spans()
        assert [
            (s.name, s.instrumentation_scope and s.instrumentation_scope.name) for s in spans
        ] == [("GET /items/<int:item_id>", "opentelemetry.instrumentation.flask")]
        assert "makes none (no duplicates)" in caplog.text
        assert requests_counted(registry_of(app), "/items/<int:item_id>", 200) == 1.0
    finally:
        FlaskInstrumentor().uninstrument_app(app)  # type: ignore[no-untyped-call]


def test_a_global_response_propagator_adds_traceresponse(sdk: Traced) -> None:
    app = make_app()
    SignalMetricsInstrumentor().instrument_app(app, tracer_provider=sdk.provider)
    with responding(TraceResponsePropagator()):
        response = app.test_client().get("/items/1")
    (span,) = sdk.exporter.get_finished_spans()
    context = span.get_span_context()
    assert context is not None
    assert response.headers["traceresponse"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )
    assert response.headers["Access-Control-Expose-Headers"] == "traceresponse"
    assert "traceresponse" not in app.test_client().get("/items/1").headers


def test_uninstrument_app_keeps_every_other_route_as_it_was(sdk: Traced) -> None:
    app = make_app()
    app.add_url_rule("/a//b", "ab", lambda: "ab", merge_slashes=False)
    client = app.test_client()
    instrumentor = SignalMetricsInstrumentor()
    instrumentor.instrument_app(app, tracer_provider=sdk.provider)
    instrumentor.uninstrument_app(app)
    options = client.options("/items/1")  # Flask's automatic answer, not the view's
    assert (options.status_code, options.text) == (200, "")
    assert sorted(str(options.headers["Allow"]).split(", ")) == ["GET", "HEAD", "OPTIONS"]
    assert client.options("/static/x").headers.get("Allow") is not None
    assert (client.get("/a//b").status_code, client.get("/a//b").text) == (200, "ab")


def test_traceresponse_on_a_reused_response_is_set_not_piled_up(sdk: Traced) -> None:
    app = flask.Flask(__name__)
    shared = flask.Response("same", headers={"Access-Control-Expose-Headers": "X-Version"})
    app.add_url_rule("/shared", "shared", lambda: shared)
    SignalMetricsInstrumentor().instrument_app(app, tracer_provider=sdk.provider)
    with responding(TraceResponsePropagator()):
        responses = [app.test_client().get("/shared") for _ in range(3)]
    last = sdk.exporter.get_finished_spans()[-1].get_span_context()
    assert last is not None
    assert responses[-1].headers.getlist("traceresponse") == [
        f"00-{last.trace_id:032x}-{last.span_id:016x}-{int(last.trace_flags):02x}"
    ]
    assert responses[-1].headers["Access-Control-Expose-Headers"] == "X-Version, traceresponse"


def test_the_apps_own_set_up_is_not_undone_by_uninstrument_app(sdk: Traced) -> None:
    from flask_signal_metrics import SignalMetrics

    app = make_app()
    instrumentor = SignalMetricsInstrumentor()
    instrumentor.instrument_app(app, tracer_provider=sdk.provider, path=None)
    SignalMetrics(app)  # replaces the instrumentor's
    instrumentor.uninstrument_app(app)
    assert "signal_metrics" in app.extensions
    assert app.test_client().get("/metrics").status_code == 200


def test_a_bad_value_leaves_the_instrumentors_set_up_in_place(sdk: Traced) -> None:
    from flask_signal_metrics import SignalMetrics

    app = make_app()
    SignalMetricsInstrumentor().instrument_app(app, tracer_provider=sdk.provider)
    app.config["SIGNAL_METRICS_BUCKETS"] = "nope"
    with pytest.raises(TypeError, match="SIGNAL_METRICS_BUCKETS"):
        SignalMetrics(app)
    assert app.extensions["signal_metrics"].instrumented
    assert app.test_client().get("/metrics").status_code == 200


def test_with_opentelemetry_instrumentation_flask_its_meters_only(sdk: Traced) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    app = make_app()
    FlaskInstrumentor().instrument_app(app, meter_provider=meters)  # type: ignore[no-untyped-call]
    try:
        SignalMetricsInstrumentor().instrument_app(app, meter_provider=meters)
        app.test_client().get("/items/1")
        data = reader.get_metrics_data()
        assert data is not None
        scopes = {
            scope.scope.name
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            if scope.metrics
        }
        assert scopes == {"opentelemetry.instrumentation.flask"}
    finally:
        FlaskInstrumentor().uninstrument_app(app)  # type: ignore[no-untyped-call]
        meters.shutdown()


def test_uninstrument_leaves_a_later_replacement_of_flask_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = flask.Flask
    ours = SignalMetricsInstrumentor()
    ours.instrument()
    try:

        class Later(flask.Flask):  # another instrumentor's, made after ours
            pass

        flask.Flask = Later  # type: ignore[misc]
        with caplog.at_level(logging.WARNING, "flask_signal_metrics"):
            ours.uninstrument()
        assert flask.Flask is Later
        assert "left as it is" in caplog.text
    finally:
        flask.Flask = original  # type: ignore[misc]


def test_http_route_is_the_template_whatever_the_grouping(sdk: Traced) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    app = make_app()
    SignalMetricsInstrumentor().instrument_app(
        app,
        tracer_provider=sdk.provider,
        meter_provider=meters,
        naming="classic",
        group_by="full_path",
    )
    app.test_client().get("/items/3?token=secret")
    (span,) = sdk.exporter.get_finished_spans()
    assert (span.name, (span.attributes or {})["http.route"]) == (
        "GET /items/<int:item_id>",
        "/items/<int:item_id>",
    )
    data = reader.get_metrics_data()
    assert data is not None
    routes = {
        (point.attributes or {}).get("http.route")
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "http.server.request.duration"
        for point in metric.data.data_points
    }
    assert routes == {"/items/<int:item_id>"}
    meters.shutdown()


def test_a_raising_response_propagator_is_counted_and_changes_nothing(sdk: Traced) -> None:
    class Raising(TraceResponsePropagator):
        def inject(self, *args: t.Any, **kwargs: t.Any) -> None:
            raise RuntimeError("propagator bug")

    app = make_app()
    SignalMetricsInstrumentor().instrument_app(app, tracer_provider=sdk.provider)
    with responding(Raising()):
        response = app.test_client().get("/items/1")
    assert (response.status_code, response.text) == (200, "item 1")
    assert "traceresponse" not in response.headers
    errors = value(
        registry_of(app), "flask_signal_metrics_receiver_errors_total", signal="request-finished"
    )
    assert errors == 1.0
    assert len(sdk.exporter.get_finished_spans()) == 1
