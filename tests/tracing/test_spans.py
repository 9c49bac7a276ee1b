"""Server, render and flash spans: :mod:`flask_signal_metrics.tracing.spans`."""

from __future__ import annotations

import contextlib
import io
import logging
import time
import typing as t
from pathlib import Path

import pytest
from flask import Response
from flask import stream_template_string
from flask import stream_with_context
from flask import url_for
from opentelemetry import baggage
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.tracing import spans as spans_module

from ..conftest import in_flight
from ..conftest import make_app
from ..conftest import make_excluding_app
from ..conftest import MakeTraced
from ..conftest import memory_provider
from ..conftest import requests_counted
from ..conftest import Traced
from ..conftest import value
from .conftest import TRACE_ID
from .conftest import TRACEPARENT


@pytest.mark.parametrize(
    ("method", "path", "status", "name", "route", "error"),
    [
        ("GET", "/item/7", 200, "GET /item/<int:item_id>", "/item/<int:item_id>", None),
        ("GET", "/nowhere", 404, "GET", None, None),
        ("GET", "/abort", 404, "GET /abort", "/abort", None),
        ("GET", "/handled", 409, "GET /handled", "/handled", None),
        ("GET", "/boom", 500, "GET /boom", "/boom", "ValueError"),
        ("GET", "/unavailable", 503, "GET /unavailable", "/unavailable", "503"),
        ("HEAD", "/item/1", 200, "HEAD /item/<int:item_id>", "/item/<int:item_id>", None),
        ("BREW", "/item/1", 405, "HTTP", None, None),
        ("POST", "/item/1", 405, "POST", None, None),
    ],
)
def test_server_span_name_attributes_status(
    traced: Traced,
    method: str,
    path: str,
    status: int,
    name: str,
    route: str | None,
    error: str | None,
) -> None:
    traced.app.testing = False  # the 500 as a server sends it
    response = traced.client.open(path + "?q=1", method=method)
    assert response.status_code == status
    (span,) = traced.spans()
    assert span.name == name
    assert span.kind is SpanKind.SERVER
    attributes = dict(span.attributes or {})
    assert attributes["http.response.status_code"] == status
    assert attributes.get("http.route") == route
    assert attributes["url.path"] == path
    assert attributes["url.query"] == "q=1"
    assert attributes["url.scheme"] == "http"
    assert attributes["server.address"] == "localhost"
    assert attributes["server.port"] == 80
    assert attributes["client.address"] == "127.0.0.1"
    assert attributes["network.protocol.version"] == "1.1"
    assert str(attributes["user_agent.original"]).startswith("Werkzeug/")
    if method == "BREW":
        assert attributes["http.request.method"] == "_OTHER"
        assert attributes["http.request.method_original"] == "BREW"
    else:
        assert attributes["http.request.method"] == method
        assert "http.request.method_original" not in attributes
    assert attributes.get("error.type") == error
    # 5xx is an error; 4xx is the client's and stays unset; never OK.
    assert span.status.status_code is (StatusCode.ERROR if error else StatusCode.UNSET)
    exceptions = [e for e in span.events if e.name == "exception"]
    if error == "ValueError":
        (event,) = exceptions
        assert (event.attributes or {})["exception.type"] == "ValueError"
    else:
        assert exceptions == []


def test_streamed_span_ends_when_body_is_done(traced: Traced) -> None:
    produced: list[int] = []

    @traced.app.get("/slowstream")
    def slow() -> Response:
        def chunks() -> t.Iterator[str]:
            yield "a"
            time.sleep(0.05)
            produced.append(time.time_ns())
            yield "b"

        return Response(stream_with_context(chunks()))

    response = traced.client.get("/slowstream")
    assert traced.spans() == []  # the view returned; the body is not sent yet
    assert response.get_data() == b"ab"
    response.close()
    (span,) = traced.spans()
    # The span's end is its wall-clock start plus the monotonic duration: a
    # wall clock adjusted meanwhile moves it a little (0.4 ms seen on CI), not
    # by the 50 ms of the body a span ended at the view's return would miss.
    assert span.end_time is not None and span.end_time >= produced[0] - 10_000_000


@pytest.mark.parametrize(
    ("path", "body"), [("/stream", b"ab"), ("/plainstream", b"xy")]
)  # with and without stream_with_context
def test_streamed_shapes_end_once_after_their_body(traced: Traced, path: str, body: bytes) -> None:
    response = traced.client.get(path)
    assert traced.spans() == []
    assert response.get_data() == body
    response.close()
    (span,) = traced.spans()
    assert (span.attributes or {})["http.response.status_code"] == 200


@pytest.mark.parametrize(
    ("path", "closed"),
    [
        ("/plainstream", False),  # never read, never closed (a middleware dropping close())
        ("/stream", True),  # closed unread (HEAD, a client gone); Flask 3.0 tears down then
    ],
)
def test_a_stream_unread_leaves_nothing_current(traced: Traced, path: str, closed: bool) -> None:
    """Its body may be produced in another thread, or never."""
    response = traced.client.get(path)
    if closed:
        response.close()
    assert not trace.get_current_span().get_span_context().is_valid
    traced.client.get("/item/1")
    server = traced.spans()[-1]
    assert server.name == "GET /item/<int:item_id>" and server.parent is None
    response.close()
    assert len(traced.spans()) == 2
    assert requests_counted(traced.registry, path, 200) == 1  # no GeneratorExit error type


@pytest.mark.parametrize("path", ["/item/1", "/file", "/plainstream"])
def test_contexts_the_app_attaches_around_a_request_stay_in_order(
    traced: Traced, path: str
) -> None:
    """before_request attaches, teardown_request detaches (and makes a span): the usual pattern."""
    from flask import g
    from flask import send_file
    from opentelemetry import context

    app, parents = traced.app, []

    @app.before_request
    def attach() -> None:
        g.token = context.attach(baggage.set_baggage("tenant", "acme"))

    @app.teardown_request
    def detach(error: BaseException | None) -> None:
        with traced.provider.get_tracer("app").start_as_current_span("db.close") as span:
            parents.append(t.cast(ReadableSpan, span).parent)
        context.detach(g.token)

    @app.get("/file")
    def file() -> Response:
        return send_file(io.BytesIO(b"data"), mimetype="text/plain")

    response = traced.client.get(path)
    response.close()
    (server,) = traced.spans()
    assert [parent.span_id if parent else None for parent in parents] == [server.context.span_id]
    assert not trace.get_current_span().get_span_context().is_valid
    assert baggage.get_baggage("tenant") is None
    traced.client.get("/item/2")
    assert traced.spans()[-1].parent is None


def test_send_file_of_an_open_file_is_recorded_and_its_span_ends(
    traced: Traced, tmp_path: Path
) -> None:
    """direct_passthrough: the server closes the file's wrapper, never the response."""
    from flask import send_file

    (tmp_path / "report.txt").write_bytes(b"x" * 740)

    @traced.app.get("/report")
    def report() -> Response:
        return send_file((tmp_path / "report.txt").open("rb"), mimetype="text/plain")

    response = traced.client.get("/report")
    assert response.get_data() == b"x" * 740
    response.close()
    assert [span.name for span in traced.spans()] == ["GET /report"]
    assert requests_counted(traced.registry, "/report", 200) == 1
    assert in_flight(traced.registry) == 0


def test_a_failed_render_in_a_copied_context_on_a_pooled_thread_ends(traced: Traced) -> None:
    """The pool's thread runs other jobs next: nothing of the copy stays current there."""
    from concurrent.futures import ThreadPoolExecutor

    from flask import copy_current_request_context
    from flask import render_template_string

    pool = ThreadPoolExecutor(max_workers=1)

    @traced.app.get("/job")
    def job() -> str:
        @copy_current_request_context
        def render() -> None:
            with contextlib.suppress(ZeroDivisionError):
                render_template_string("{{ 1 / 0 }}")

        pool.submit(render).result(10)
        return "queued"

    try:
        assert traced.client.get("/job").text == "queued"
        later = pool.submit(lambda: trace.get_current_span().get_span_context().is_valid)
        assert later.result(10) is False
    finally:
        pool.shutdown()
    (render,) = traced.spans(SpanKind.INTERNAL)
    assert render.status.status_code is StatusCode.ERROR


def test_a_streamed_template_is_a_render_like_any_other(make_traced: MakeTraced) -> None:
    app = make_app()

    @app.get("/list")
    def listing() -> Response:
        return Response(stream_template_string("{% for i in n %}{{ i }}{% endfor %}", n=range(3)))

    traced = make_traced(app)
    response = traced.client.get("/list")
    assert response.get_data() == b"012"
    response.close()
    render, server = sorted(traced.spans(None), key=lambda span: span.kind != SpanKind.INTERNAL)
    assert render.name == "render __string__"
    assert render.status.status_code == StatusCode.UNSET
    assert render.parent is not None and render.parent.span_id == server.context.span_id
    assert render.end_time is not None and server.end_time is not None
    assert render.end_time <= server.end_time
    count = "flask_template_render_duration_seconds_count"
    assert value(traced.registry, count, template="__string__") == 1


def test_span_duration_is_the_histogram_duration(traced: Traced) -> None:
    traced.client.get("/item/1")
    (span,) = traced.spans()
    assert span.end_time is not None and span.start_time is not None
    recorded = value(
        traced.registry,
        "http_server_request_duration_seconds_sum",
        http_request_method="GET",
        http_route="/item/<int:item_id>",
        http_response_status_code="200",
        url_scheme="http",
        error_type="",
    )
    assert (span.end_time - span.start_time) / 1e9 == pytest.approx(recorded, abs=1e-9)


def test_template_child_span_and_flash_events(traced: Traced) -> None:
    traced.client.get("/page")
    (server,) = traced.spans()
    (render,) = traced.spans(SpanKind.INTERNAL)
    assert render.name == "render __string__"
    assert render.parent is not None and render.parent.span_id == server.context.span_id
    flashes = [e for e in server.events if e.name == "flask.message_flashed"]
    assert [dict(e.attributes or {}) for e in flashes] == [
        {"flask.flash.category": "success"},
        {"flask.flash.category": "message"},
    ]
    assert "saved" not in repr([e.attributes for e in server.events])  # never the text


def test_failed_render_span_ends_as_error(traced: Traced) -> None:
    from flask import render_template_string

    @traced.app.get("/badtemplate")
    def bad() -> str:
        return render_template_string("{{ 1 / 0 }}")

    @traced.app.errorhandler(500)
    def error_page(error: Exception) -> tuple[str, int]:
        return render_template_string("sorry"), 500

    traced.app.testing = False
    assert traced.client.get("/badtemplate").status_code == 500
    failed, page = traced.spans(SpanKind.INTERNAL)
    (server,) = traced.spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert page.status.status_code is StatusCode.UNSET
    # The error page is the request's child, not the failed render's, and
    # the failed render ended when its exception left the view.
    assert page.parent is not None and page.parent.span_id == server.context.span_id
    assert failed.end_time is not None and page.start_time is not None
    assert failed.end_time <= page.start_time
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_failed_render_in_an_async_view_ends_quietly(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    """Its context was made current in asgiref's event loop thread, not the request's."""
    from flask import render_template_string

    @traced.app.get("/async-render")
    async def render_fails() -> str:
        with contextlib.suppress(ZeroDivisionError):
            render_template_string("{{ 1 / 0 }}")
        return "caught"

    with caplog.at_level(logging.ERROR):
        assert traced.client.get("/async-render").text == "caught"
    assert [record.getMessage() for record in caplog.records] == []
    (render,) = traced.spans(SpanKind.INTERNAL)
    assert render.status.status_code is StatusCode.ERROR
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_failed_render_outside_a_request_ends_with_its_context(traced: Traced) -> None:
    """test_request_context() in a job: not a request, but its render span still ends."""
    from flask import render_template_string

    with traced.app.test_request_context("/mail"), contextlib.suppress(ZeroDivisionError):
        render_template_string("{{ 1 / 0 }}")
    (render,) = traced.spans(SpanKind.INTERNAL)
    assert render.status.status_code is StatusCode.ERROR
    assert not trace.get_current_span().get_span_context().is_valid


def test_no_sdk_no_span_no_context(registry: CollectorRegistry) -> None:
    """The global provider is the API's proxy: nothing is made or attached."""
    app = make_app()
    seen = []

    @app.get("/current")
    def current() -> str:
        seen.append(trace.get_current_span().get_span_context().is_valid)
        return "ok"

    SignalMetrics(app, registry=registry)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    app.test_client().get("/current", headers={"traceparent": TRACEPARENT})
    assert seen == [False]
    assert app.extensions["signal_metrics"].tracing.tracer() is None


def test_a_global_provider_set_while_serving_is_used_from_the_next_lookup(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While none is set the global provider is looked up once per recheck, not per request."""
    monkeypatch.setattr(spans_module, "_RECHECK", 0.5)
    app = make_app()
    SignalMetrics(app, registry=registry)
    client = app.test_client()
    client.get("/page")  # a request and a render, with no provider: no span, looked up
    provider, exporter = memory_provider()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # set_tracer_provider, undone
    client.get("/page")
    assert exporter.get_finished_spans() == ()  # within the recheck: not looked up
    time.sleep(0.6)
    client.get("/page")
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["GET /page", "render __string__"]
    client.get("/page")  # from now on every request has its span
    assert len(exporter.get_finished_spans()) == 4
    assert requests_counted(registry, "/page", 200) == 4


def test_tracing_false_makes_no_spans(make_traced: MakeTraced) -> None:
    traced = make_traced(tracing=False)
    traced.client.get("/page")
    assert traced.spans(None) == []
    assert traced.app.extensions["signal_metrics"].tracing is None


def test_excluded_requests_make_no_span(make_traced: MakeTraced) -> None:
    """The one exclusion rule holds for spans too: /metrics, @exclude, SIGNAL_METRICS_EXCLUDE."""
    app = make_excluding_app()
    traced = make_traced(app)
    for path in ["/metrics", "/healthz", "/item/1", "/item/15", "/page"]:
        assert traced.client.get(path).status_code == 200
    assert traced.spans(None) == []  # no server, render or flash anything
    traced.client.get("/item/2")
    assert [s.name for s in traced.spans(None)] == ["GET /item/<int:item_id>"]


def test_exemplars_link_sampled_spans_in_openmetrics_only(traced: Traced) -> None:
    traced.client.get("/item/1", headers={"traceparent": TRACEPARENT})
    (span,) = traced.spans()
    om = traced.client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    ).text
    (line,) = [x for x in om.splitlines() if "# {" in x]
    assert line.startswith("http_server_request_duration_seconds_bucket{")
    assert f'trace_id="{TRACE_ID}"' in line
    assert f'span_id="{span.context.span_id:016x}"' in line
    assert "# {" not in traced.client.get("/metrics").text  # text format: none


def test_unsampled_requests_have_no_exemplar(make_traced: MakeTraced) -> None:
    traced = make_traced(sampler=ALWAYS_OFF)
    traced.client.get("/item/1")
    om = traced.client.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
    assert "trace_id" not in om
    assert traced.spans(None) == []


def test_classic_naming_carries_exemplars(make_traced: MakeTraced) -> None:
    # One bucket for both requests whatever the machine's speed: one exemplar.
    client = make_traced(naming="classic", buckets=[100]).client
    client.get("/item/1")
    client.get("/item/2")
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
    lines = [x for x in om.splitlines() if "# {" in x]
    assert len(lines) == 1 and lines[0].startswith("flask_http_request_duration_seconds_bucket")


def test_with_the_contrib_instrumentation_a_caught_render_leaves_nothing_current(
    traced: Traced,
) -> None:
    """Its teardown_request detaches its span before our receiver ends the render."""
    from flask import render_template_string

    @traced.app.get("/caught-render")
    def caught() -> str:
        with contextlib.suppress(ZeroDivisionError):
            render_template_string("{{ 1 / 0 }}")
        return "fallback"

    FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call]
        traced.app, tracer_provider=traced.provider
    )
    try:
        assert traced.client.get("/caught-render").text == "fallback"
        assert not trace.get_current_span().get_span_context().is_valid
        (render,) = traced.spans(SpanKind.INTERNAL)
        assert render.status.status_code is StatusCode.ERROR
    finally:
        FlaskInstrumentor().uninstrument_app(traced.app)  # type: ignore[no-untyped-call]


def test_opentelemetry_instrumentation_flask_keeps_its_span_alone(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call]
        traced.app, tracer_provider=traced.provider
    )
    try:
        with caplog.at_level(logging.WARNING, logger="flask_signal_metrics"):
            traced.client.get("/page")
            traced.client.get("/page")
        servers = traced.spans()
        assert len(servers) == 2  # one per request: contrib's, no duplicate
        scopes = {s.instrumentation_scope.name for s in servers if s.instrumentation_scope}
        assert scopes == {"opentelemetry.instrumentation.flask"}
        renders = traced.spans(SpanKind.INTERNAL)
        assert {r.parent.span_id for r in renders if r.parent} == {
            s.context.span_id for s in servers
        }
        assert len([r for r in caplog.records if "already" in r.getMessage()]) == 1
        om = traced.client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert f'span_id="{servers[-1].context.span_id:016x}"' in om.text
    finally:
        FlaskInstrumentor().uninstrument_app(traced.app)  # type: ignore[no-untyped-call]


def test_a_failing_provider_never_changes_the_response(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(TracerProvider):
        def get_tracer(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
            raise RuntimeError("broken provider")

    bare = make_app().test_client().get("/item/1")
    app = make_app()
    SignalMetrics(app, registry=registry, tracer_provider=Broken(shutdown_on_exit=False))
    with caplog.at_level(logging.ERROR, logger="flask_signal_metrics"):
        responses = [app.test_client().get("/item/1") for _ in range(3)]
    assert {(r.status_code, r.data) for r in responses} == {(bare.status_code, bare.data)}
    errors = value(registry, "flask_signal_metrics_receiver_errors_total", signal="request-started")
    assert errors == 3
    assert len(caplog.records) == 1
    # Counted (from a late start), and not left in flight.
    assert requests_counted(registry, "/item/<int:item_id>", 200) == 3
    assert in_flight(registry) == 0


def test_tracer_provider_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="tracer_provider must be an OpenTelemetry"):
        SignalMetrics(make_app(), tracer_provider="global")  # type: ignore[arg-type]


def test_under_a_wsgi_middleware_span_the_request_span_is_internal(traced: Traced) -> None:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    traced.app.wsgi_app = OpenTelemetryMiddleware(  # type: ignore[method-assign]
        traced.app.wsgi_app, tracer_provider=traced.provider
    )
    traced.client.get("/item/1", headers={"traceparent": TRACEPARENT})
    (outer,) = traced.spans()
    (inner,) = traced.spans(SpanKind.INTERNAL)
    assert inner.name == "GET /item/<int:item_id>"
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
    assert f"{outer.context.trace_id:032x}" == TRACE_ID


def test_propagated_exception_still_ends_the_span_once(traced: Traced) -> None:
    traced.app.testing = True  # PROPAGATE_EXCEPTIONS: no request_finished
    with pytest.raises(ValueError):
        traced.client.get("/boom")
    (span,) = traced.spans()
    assert (span.attributes or {})["http.response.status_code"] == 500
    assert span.status.status_code is StatusCode.ERROR
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_span_the_view_ended_is_left_alone(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    @traced.app.get("/ends")
    def ends() -> str:
        trace.get_current_span().end()
        raise ValueError("after the span ended")

    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        assert traced.client.get("/ends").status_code == 500
    (span,) = traced.spans()  # exported once, as the view ended it
    assert "http.response.status_code" not in (span.attributes or {})
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []
    assert value(traced.registry, "flask_request_exceptions_total", http_request_method="GET",
                 http_route="/ends", error_type="ValueError") == 1  # fmt: skip


@pytest.mark.parametrize("path", ["/item/1", "/caught-render"])
def test_a_raising_span_processor_costs_no_metric(traced: Traced, path: str) -> None:
    """Also with a render left open at teardown (a template error the view caught)."""
    from flask import render_template_string
    from opentelemetry.sdk.trace import SpanProcessor

    class Raising(SpanProcessor):
        def on_end(self, span: t.Any) -> None:
            raise RuntimeError("a broken exporter")

    @traced.app.get("/caught-render")
    def caught() -> str:
        with contextlib.suppress(ZeroDivisionError):
            render_template_string("{{ 1 / 0 }}")
        return "fallback"

    traced.provider.add_span_processor(Raising())
    assert traced.client.get(path).status_code == 200
    route = "/item/<int:item_id>" if path == "/item/1" else path
    assert requests_counted(traced.registry, route, 200) == 1
    assert in_flight(traced.registry) == 0
    errors = value(
        traced.registry, "flask_signal_metrics_receiver_errors_total", signal="request-tearing-down"
    )
    assert errors == 1  # the span could not end; the failure counted, the metric kept
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_request_context_pushed_inside_a_render_leaves_it_alone(traced: Traced) -> None:
    """A template helper using test_request_context() for an external URL."""
    from flask import render_template_string

    def external_link() -> str:
        with traced.app.test_request_context("/", base_url="https://shop.example"):
            return url_for("item", item_id=1, _external=True)

    traced.app.jinja_env.globals["external_link"] = external_link

    @traced.app.get("/link")
    def link() -> str:
        return render_template_string("<a href='{{ external_link() }}'>item</a>")

    assert traced.client.get("/link").text == "<a href='https://shop.example/item/1'>item</a>"
    (render,) = traced.spans(SpanKind.INTERNAL)
    assert render.status.status_code is StatusCode.UNSET
    count = "flask_template_render_duration_seconds_count"
    assert value(traced.registry, count, template="__string__") == 1


@pytest.mark.parametrize("outer", [True, False])
def test_only_the_server_span_has_the_captured_headers(
    make_traced: MakeTraced, monkeypatch: pytest.MonkeyPatch, outer: bool
) -> None:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-tenant")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "content-type")
    traced = make_traced()
    if outer:  # the middleware's span is the SERVER one; ours is INTERNAL
        traced.app.wsgi_app = OpenTelemetryMiddleware(  # type: ignore[method-assign]
            traced.app.wsgi_app, tracer_provider=traced.provider
        )
    traced.client.get("/item/1", headers={"X-Tenant": "acme"})
    ours = [s for s in traced.spans(None) if s.name == "GET /item/<int:item_id>"]
    (span,) = ours if not outer else [s for s in ours if s.kind is SpanKind.INTERNAL]
    headers = {k: v for k, v in (span.attributes or {}).items() if ".header." in k}
    if outer:
        assert headers == {}
        (server,) = traced.spans()
        assert (server.attributes or {})["http.request.header.x_tenant"] == ("acme",)
    else:
        assert headers == {
            "http.request.header.x-tenant": ("acme",),
            "http.response.header.content-type": ("text/html; charset=utf-8",),
        }


class Gone(Exception):
    """An exception of the app's own: its error.type is its fully qualified name."""


def test_error_type_is_the_fully_qualified_class_name(traced: Traced) -> None:
    @traced.app.get("/gone")
    def gone() -> str:
        raise Gone("away")

    traced.app.testing = False
    assert traced.client.get("/gone").status_code == 500
    (span,) = traced.spans()
    assert (span.attributes or {})["error.type"] == "tests.tracing.test_spans.Gone"
    assert (
        requests_counted(traced.registry, "/gone", 500, error="tests.tracing.test_spans.Gone") == 1
    )


def test_a_detach_that_fails_leaves_the_next_request_a_root(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import context

    def failing(token: object) -> None:
        raise RuntimeError("detach")

    with monkeypatch.context() as patched:
        patched.setattr(context, "detach", failing)
        assert traced.client.get("/item/1").text == "item 1"
    assert not trace.get_current_span().get_span_context().is_valid
    traced.client.get("/item/2")
    first, second = traced.spans()
    assert second.kind is SpanKind.SERVER and second.parent is None
    assert first.context.trace_id != second.context.trace_id
    errors = "flask_signal_metrics_receiver_errors_total"
    assert traced.registry.get_sample_value(errors, {"signal": "request-tearing-down"}) == 1
