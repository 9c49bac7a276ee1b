from __future__ import annotations

import contextlib
import logging
import threading
import typing as t

import pytest
from flask import copy_current_request_context
from flask import Flask
from flask import render_template
from flask import Request as FlaskRequest
from flask import Response
from flask import signals
from flask import url_for
from flask.testing import FlaskClient
from jinja2 import DictLoader
from prometheus_client import CollectorRegistry

from flask_signal_metrics import _compat
from flask_signal_metrics import exclude
from flask_signal_metrics import SignalMetrics
from flask_signal_metrics import state as state_module
from flask_signal_metrics.labels import OVERFLOW
from flask_signal_metrics.receivers import recording
from flask_signal_metrics.receivers import requests as request_receivers
from flask_signal_metrics.receivers import templates as template_receivers
from flask_signal_metrics.state import get_state

from .conftest import add_copying_view
from .conftest import http_labels
from .conftest import in_flight
from .conftest import make_app
from .conftest import make_excluding_app
from .conftest import requests_counted
from .conftest import total_requests
from .conftest import value


@pytest.mark.parametrize(
    ("method", "path", "route", "status", "error"),
    [
        ("GET", "/item/7", "/item/<int:item_id>", 200, ""),
        ("GET", "/nope", "", 404, ""),  # no route matched
        ("POST", "/item/7", "", 405, ""),  # routing failed: no url_rule
        ("GET", "/dir", "", 308, ""),  # strict-slash redirect
        ("GET", "/abort", "/abort", 404, ""),  # 4xx is not an error
        ("GET", "/handled", "/handled", 409, ""),  # handled by an errorhandler
        ("GET", "/boom", "/boom", 500, "ValueError"),  # escaped the view
        ("GET", "/unavailable", "/unavailable", 503, "503"),  # a 5xx without exception
        ("HEAD", "/item/7", "/item/<int:item_id>", 200, ""),
        ("OPTIONS", "/item/7", "/item/<int:item_id>", 200, ""),
        ("BREW", "/item/7", "", 405, ""),
    ],
)
def test_each_outcome_is_counted_once(
    client: FlaskClient,
    registry: CollectorRegistry,
    method: str,
    path: str,
    route: str,
    status: int,
    error: str,
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    label = "_OTHER" if method == "BREW" else method
    assert requests_counted(registry, route, status, method=label, error=error) == 1
    assert total_requests(registry) == 1


def test_propagated_exception_is_counted_as_500(registry: CollectorRegistry) -> None:
    # testing=True sets PROPAGATE_EXCEPTIONS: request_finished is never sent.
    app = make_app()
    app.testing = True
    SignalMetrics(app, registry=registry)
    with pytest.raises(ValueError, match="boom"):
        app.test_client().get("/boom")
    assert requests_counted(registry, "/boom", 500, error="ValueError") == 1
    assert total_requests(registry) == 1
    assert in_flight(registry) == 0


def test_unhandled_exception_is_counted_by_type(
    client: FlaskClient, registry: CollectorRegistry
) -> None:
    client.get("/boom")
    client.get("/boom")
    client.get("/handled")  # handled: not an unhandled exception
    assert (
        value(
            registry,
            "flask_request_exceptions_total",
            http_request_method="GET",
            http_route="/boom",
            error_type="ValueError",
        )
        == 2
    )
    assert (
        value(
            registry,
            "flask_request_exceptions_total",
            http_request_method="GET",
            http_route="/handled",
            error_type="HandledError",
        )
        == 0
    )


def _raise(sender: Flask, **extra: object) -> None:
    raise RuntimeError("a user's receiver failed")


@pytest.mark.parametrize("signal", [signals.request_started, signals.request_finished])
def test_counted_once_when_another_receiver_raises(
    registry: CollectorRegistry, signal: t.Any
) -> None:
    # A raising receiver on request_finished makes Flask send it a second time
    # with a 500; on request_started it may stop ours from running at all.
    app = make_app()
    SignalMetrics(app, registry=registry)
    signal.connect(_raise, sender=app)
    try:
        response = app.test_client().get("/item/1")
    finally:
        signal.disconnect(_raise, sender=app)
    assert response.status_code == 500
    assert total_requests(registry) == 1
    assert requests_counted(registry, "/item/<int:item_id>", 500, error="RuntimeError") == 1
    assert in_flight(registry) == 0


@pytest.mark.parametrize("path", ["/stream", "/plainstream"])
def test_streamed_response_is_counted_once(
    client: FlaskClient, registry: CollectorRegistry, path: str
) -> None:
    # With stream_with_context, Flask 3.1 sends request_tearing_down twice.
    response = client.get(path)
    assert response.data in (b"ab", b"xy")
    response.close()
    assert total_requests(registry) == 1
    # A stream's length is unknown: its size is not guessed.
    assert value(registry, "http_server_response_body_size_bytes_count", **_labels(path)) == 0


def _labels(path: str) -> dict[str, str]:
    return {
        "http_request_method": "GET",
        "http_route": path,
        "http_response_status_code": "200",
        "url_scheme": "http",
        "error_type": "",
    }


def test_in_flight_counts_the_request_being_handled(registry: CollectorRegistry) -> None:
    app = make_app()
    SignalMetrics(app, registry=registry)
    seen: list[float] = []

    @app.get("/inside")
    def inside() -> str:
        seen.append(in_flight(registry))
        return "ok"

    app.test_client().get("/inside")
    assert seen == [1.0]
    assert in_flight(registry) == 0


def test_body_sizes(client: FlaskClient, registry: CollectorRegistry) -> None:
    client.post("/echo", data=b"x" * 300)
    client.get("/item/12345")
    echo = {**_labels("/echo"), "http_request_method": "POST"}
    assert value(registry, "http_server_request_body_size_bytes_sum", **echo) == 300
    assert value(registry, "http_server_response_body_size_bytes_sum", **echo) == 300
    item = _labels("/item/<int:item_id>")
    assert value(registry, "http_server_request_body_size_bytes_sum", **item) == 0
    assert value(registry, "http_server_request_body_size_bytes_count", **item) == 1
    assert value(registry, "http_server_response_body_size_bytes_sum", **item) == len("item 12345")


def test_head_sends_no_body(client: FlaskClient, registry: CollectorRegistry) -> None:
    client.head("/item/1")
    head = {**_labels("/item/<int:item_id>"), "http_request_method": "HEAD"}
    assert value(registry, "http_server_response_body_size_bytes_sum", **head) == 0
    assert value(registry, "http_server_response_body_size_bytes_count", **head) == 1


@pytest.mark.parametrize(
    ("method", "status", "known"),
    [
        ("GET", 204, None),
        ("GET", 304, None),
        ("HEAD", 200, "GET"),  # HEAD labelled _OTHER still sends no body
    ],
)
def test_responses_the_server_sends_without_a_body_record_no_bytes(
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    status: int,
    known: str | None,
) -> None:
    if known is not None:
        monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", known)
    app = make_app()

    @app.get("/bodyless")
    def bodyless() -> Response:
        return Response("a body the server drops", status=status)

    SignalMetrics(app, registry=registry)
    response = app.test_client().open("/bodyless", method=method)
    assert (response.status_code, response.data) == (status, b"")
    labels = {
        **_labels("/bodyless"),
        "http_request_method": method if known is None else "_OTHER",
        "http_response_status_code": str(status),
    }
    assert value(registry, "http_server_response_body_size_bytes_count", **labels) == 1
    assert value(registry, "http_server_response_body_size_bytes_sum", **labels) == 0


def test_a_copied_request_context_does_not_end_the_request(
    app: Flask, registry: CollectorRegistry
) -> None:
    """copy_current_request_context: the copy's pop tears down the same environ."""
    add_copying_view(app)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/work").status_code == 200
    assert requests_counted(registry, "/work", 200) == 3
    assert total_requests(registry) == 3
    assert in_flight(registry) == 0


def test_a_copied_context_failing_while_a_stream_is_sent_is_not_the_requests_error(
    app: Flask, registry: CollectorRegistry
) -> None:
    gate = threading.Event()

    @app.get("/feed")
    def feed() -> Response:
        @copy_current_request_context
        def job() -> None:
            gate.wait(10)
            raise ValueError("a background job failed")

        def run() -> None:
            with contextlib.suppress(ValueError):
                job()  # its copied context pops with the error

        worker = threading.Thread(target=run)
        worker.start()

        def body() -> t.Iterator[str]:
            yield "a"
            gate.set()
            worker.join(10)
            yield "b"

        return Response(body())

    response = app.test_client().get("/feed")
    assert response.get_data() == b"ab"
    response.close()
    assert requests_counted(registry, "/feed", 200) == 1
    assert total_requests(registry) == 1


def test_a_request_context_outside_a_request_is_not_counted(
    app: Flask, registry: CollectorRegistry
) -> None:
    """test_request_context() for url_for or e-mails in a job: not a request, no 500."""
    with app.test_request_context("/item/1"):
        assert url_for("item", item_id=2) == "/item/2"
    with pytest.raises(ValueError), app.test_request_context("/item/1"):
        raise ValueError("in a job")
    assert total_requests(registry) == 0
    assert in_flight(registry) == 0


def test_templates_and_flashes(client: FlaskClient, registry: CollectorRegistry) -> None:
    client.get("/page")
    client.get("/page")
    assert (
        value(registry, "flask_template_render_duration_seconds_count", template="__string__") == 2
    )
    assert value(registry, "flask_flashed_messages_total", category="success") == 2
    assert value(registry, "flask_flashed_messages_total", category="message") == 2


def test_named_templates_with_inheritance() -> None:
    from examples.app import app as shop

    shop_registry = shop.extensions["signal_metrics"].metrics.registry

    def renders(template: str) -> float:
        name = "flask_template_render_duration_seconds_count"
        return value(shop_registry, name, template=template)

    before = renders("item.html"), renders("base.html")
    assert shop.test_client().get("/items/1").status_code == 200
    # Jinja renders base.html inside item.html: one render, named by the template asked for.
    assert renders("item.html") == before[0] + 1
    assert renders("base.html") == before[1] == 0


def test_renders_past_the_cap_are_counted_as_overflow_each_time(
    registry: CollectorRegistry,
) -> None:
    # A template's series is kept for later renders (State.renders) only when
    # it is its own: the overflow series is looked up each time, which counts.
    app = make_app()
    app.config["SIGNAL_METRICS_MAX_SERIES"] = 2
    SignalMetrics(app, registry=registry, serve_default_registry=False)
    app.jinja_env.loader = DictLoader({f"t{n}.html": f"{n}" for n in range(4)})

    @app.get("/render/<int:n>")
    def render(n: int) -> str:
        return render_template(f"t{n}.html")

    client = app.test_client()
    for _ in range(3):
        for n in range(4):
            assert client.get(f"/render/{n}").text == str(n)
    assert sorted(get_state(app).renders, key=str) == ["t0.html", "t1.html"]
    name = "flask_template_render_duration_seconds_count"
    counts = [value(registry, name, template=f"t{n}.html") for n in range(4)]
    assert counts == [3, 3, 0, 0]  # no series of their own
    assert value(registry, name, template=OVERFLOW) == 6
    overflowed = "flask_signal_metrics_series_overflow_total"
    assert value(registry, overflowed, metric="flask_template_render_duration_seconds") == 6


def test_template_rendered_outside_a_request(app: Flask, registry: CollectorRegistry) -> None:
    from flask import render_template_string

    with app.app_context():
        assert render_template_string("{{ 1 + 1 }}") == "2"
    assert (
        value(registry, "flask_template_render_duration_seconds_count", template="__string__") == 1
    )
    assert total_requests(registry) == 0


def test_metrics_route_and_excluded_paths_are_not_measured(registry: CollectorRegistry) -> None:
    app = make_excluding_app()
    SignalMetrics(app, registry=registry)
    client = app.test_client()
    for path in ["/metrics", "/healthz", "/item/1", "/item/15", "/page"]:
        assert client.get(path).status_code == 200
    assert client.get("/item/2").status_code == 200
    assert total_requests(registry) == 1  # only /item/2
    # what an excluded request does is not measured either
    assert value(registry, "flask_flashed_messages_total", category="success") == 0
    assert (
        value(registry, "flask_template_render_duration_seconds_count", template="__string__") == 0
    )


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_metrics_route_answering_405_is_not_measured(
    client: FlaskClient, registry: CollectorRegistry, method: str
) -> None:
    assert client.open("/metrics", method=method).status_code == 405
    assert total_requests(registry) == 0


def test_view_excluded_after_init_app(registry: CollectorRegistry) -> None:
    app = make_app()
    SignalMetrics(app, registry=registry)

    @app.get("/later")
    @exclude
    def later() -> str:
        return "later"

    app.test_client().get("/later")
    assert total_requests(registry) == 0


def test_mount_point_is_part_of_the_route(client: FlaskClient, registry: CollectorRegistry) -> None:
    client.get("/item/1", environ_overrides={"SCRIPT_NAME": "/shop"})
    assert requests_counted(registry, "/shop/item/<int:item_id>", 200) == 1


def test_forged_scheme_is_not_a_label(client: FlaskClient, registry: CollectorRegistry) -> None:
    client.get("/item/1", environ_overrides={"wsgi.url_scheme": "gopher"})
    client.get("/item/1", base_url="https://localhost")
    assert requests_counted(registry, "/item/<int:item_id>", 200, scheme="_OTHER") == 1
    assert requests_counted(registry, "/item/<int:item_id>", 200, scheme="https") == 1


def test_no_request_data_becomes_a_label_value(
    client: FlaskClient, registry: CollectorRegistry
) -> None:
    """Path values, query, client address, headers, cookies and bodies stay out of /metrics."""
    marker, item, address = "zq7marker", "91827364", "203.0.113.77"
    headers = {
        "User-Agent": marker,
        f"X-{marker}": marker,
        "Cookie": f"session={marker}",
        "Host": f"{marker}.example",
        "Referer": f"https://{marker}.example/",
    }
    environ = {"REMOTE_ADDR": address}
    client.get(f"/item/{item}?{marker}={marker}", headers=headers, environ_base=environ)
    client.get(f"/{marker}/{item}", headers=headers, environ_base=environ)  # no route
    client.post(f"/echo?q={marker}", data=marker * 3, headers=headers, environ_base=environ)
    assert total_requests(registry) == 3
    for accept in ("text/plain", "application/openmetrics-text"):
        exposed = client.get("/metrics", headers={"Accept": accept}).text
        assert "/item/<int:item_id>" in exposed and 'http_route="/echo"' in exposed
        for secret in (marker, item, address):
            assert secret not in exposed


def test_unknown_methods_and_schemes_are_not_remembered(
    client: FlaskClient, registry: CollectorRegistry, app: Flask
) -> None:
    # Only known (method, scheme) pairs are cached: garbage cannot grow memory.
    for n in range(50):
        client.open("/item/1", method=f"X{n}")
        client.get("/item/1", environ_overrides={"wsgi.url_scheme": f"s{n}"})
    client.get("/item/1")
    assert set(get_state(app).lanes) == {("GET", "http")}
    assert requests_counted(registry, "", 405, method="_OTHER") == 50
    assert requests_counted(registry, "/item/<int:item_id>", 200, scheme="_OTHER") == 50


def test_known_methods_from_the_environment(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "GET,POST")
    app = make_app()
    SignalMetrics(app, registry=registry)
    client = app.test_client()
    client.get("/echo")
    client.put("/echo")
    assert requests_counted(registry, "/echo", 200) == 1
    assert requests_counted(registry, "/echo", 200, method="_OTHER") == 1


# -- a failing receiver never harms the request ---------------------------------

#: signal -> (path, the receivers' modules that read the helper made to fail,
#: the helper, failures per request: /page flashes twice)
_BODIES = {
    "request-started": ("/item/3", (request_receivers,), "_begin", 1),
    "request-finished": ("/item/3", (request_receivers,), "current_context", 1),
    "got-request-exception": ("/boom", (request_receivers,), "_started", 1),
    "request-tearing-down": ("/item/3", (request_receivers, recording), "perf_counter", 1),
    "before-render-template": ("/page", (template_receivers,), "perf_counter", 1),
    "template-rendered": ("/page", (template_receivers,), "_renders", 1),
    "message-flashed": ("/page", (template_receivers,), "_in_excluded_request", 2),
}


@pytest.mark.parametrize("signal", sorted(_BODIES))
def test_failing_receiver_leaves_the_response_unchanged(
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    signal: str,
) -> None:
    path, modules, helper, per_request = _BODIES[signal]
    bare = make_app().test_client()
    app = make_app()
    SignalMetrics(app, registry=registry)
    client = app.test_client()
    calls = 0
    original = getattr(modules[0], helper)

    def broken(*args: t.Any, **kwargs: t.Any) -> t.Any:
        nonlocal calls
        calls += 1
        if _receiver_running(signal):
            raise OSError("disk on fire")
        return original(*args, **kwargs)

    class BrokenVariable:  # stands in for a context variable
        def get(self, *default: None) -> t.Any:
            return broken(*default)

    if helper == "_renders":
        original = original.get
    for module in modules:
        monkeypatch.setattr(module, helper, BrokenVariable() if helper == "_renders" else broken)
    caplog.set_level(logging.ERROR, logger="flask_signal_metrics")
    for _ in range(3):
        expected = bare.get(path)
        got = client.get(path)
        assert (got.status_code, got.data) == (expected.status_code, expected.data)
        assert got.headers.get("Content-Type") == expected.headers.get("Content-Type")
    assert calls >= 3
    errors = value(registry, "flask_signal_metrics_receiver_errors_total", signal=signal)
    assert errors == 3 * per_request
    ours = [r for r in caplog.records if r.name == "flask_signal_metrics"]
    assert len(ours) == 1, "logged once per cause"
    assert signal in ours[0].getMessage()
    assert client.get("/metrics").status_code == 200


def _receiver_running(signal: str) -> bool:
    """Whether the receiver of ``signal`` is on the stack (helpers are shared)."""
    import sys

    name = "on_" + signal.replace("-", "_")
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def test_concurrent_requests_are_counted_exactly(registry: CollectorRegistry) -> None:
    import threading

    from werkzeug.test import EnvironBuilder

    app = make_app()
    SignalMetrics(app, registry=registry)
    environ = EnvironBuilder(path="/item/5").get_environ()
    threads, per_thread = 8, 500

    def start_response(*args: t.Any) -> t.Callable[[bytes], object]:
        return lambda data: None

    def hammer() -> None:
        for _ in range(per_thread):
            body = app.wsgi_app(environ.copy(), start_response)
            b"".join(body)

    done = threading.Event()
    scrapes = 0

    def scrape() -> None:  # folds pending observations while requests add more
        nonlocal scrapes
        while not done.is_set():
            list(registry.collect())
            scrapes += 1

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    scraper = threading.Thread(target=scrape)
    scraper.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    done.set()
    scraper.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers) and scrapes > 0
    n = threads * per_thread
    assert requests_counted(registry, "/item/<int:item_id>", 200) == n
    labels = http_labels("/item/<int:item_id>", 200)
    inf = value(registry, "http_server_request_duration_seconds_bucket", le="+Inf", **labels)
    assert inf == n
    responses = "http_server_response_body_size_bytes"
    assert value(registry, responses + "_count", **labels) == n
    assert value(registry, responses + "_sum", **labels) == n * len(b"item 5")
    active = in_flight(registry)
    assert active == 0


def test_debug_mode_serves_metrics(registry: CollectorRegistry) -> None:
    # prometheus-flask-exporter silently skips /metrics under the reloader.
    app = make_app()
    app.debug = True
    SignalMetrics(app, registry=registry)
    assert app.test_client().get("/metrics").status_code == 200


def _stream_app(registry: CollectorRegistry, fail: bool = False) -> Flask:
    import time

    from flask import Response
    from flask import stream_with_context

    app = make_app()
    SignalMetrics(app, registry=registry)
    seen: list[float] = []

    @app.get("/events")
    def events() -> Response:
        def chunks() -> t.Iterator[str]:
            for n in range(3):
                time.sleep(0.1)
                seen.append(in_flight(registry))
                if fail and n == 1:
                    raise ConnectionError("the backend went away mid-stream")
                yield f"data: {n}\n\n"

        return Response(stream_with_context(chunks()), mimetype="text/event-stream")

    app.config["SEEN"] = seen
    return app


def _call_wsgi(app: Flask, path: str) -> tuple[bytes, BaseException | None]:
    from werkzeug.test import EnvironBuilder

    chunks: list[bytes] = []
    body = app.wsgi_app(EnvironBuilder(path=path).get_environ(), lambda *a: lambda d: None)
    error = None
    try:
        for chunk in body:
            chunks.append(chunk)
    except Exception as e:  # what a WSGI server sees when the generator raises
        error = e
    finally:
        body.close()  # type: ignore[attr-defined]  # every WSGI server calls it
    return b"".join(chunks), error


def test_stream_is_measured_until_its_last_byte(registry: CollectorRegistry) -> None:
    app = _stream_app(registry)
    data, error = _call_wsgi(app, "/events")
    assert error is None and data.count(b"data:") == 3
    labels = {
        "http_request_method": "GET",
        "http_route": "/events",
        "http_response_status_code": "200",
        "url_scheme": "http",
        "error_type": "",
    }
    total = value(registry, "http_server_request_duration_seconds_sum", **labels)
    assert value(registry, "http_server_request_duration_seconds_count", **labels) == 1
    assert total >= 0.3  # three chunks, 0.1 s apart
    ready = value(
        registry,
        "flask_response_ready_duration_seconds_sum",
        http_request_method="GET",
        http_route="/events",
        http_response_status_code="200",
    )
    assert 0 <= ready < 0.1  # the response object came before the body
    ready_count = value(
        registry,
        "flask_response_ready_duration_seconds_count",
        http_request_method="GET",
        http_route="/events",
        http_response_status_code="200",
    )
    assert ready_count == 1
    assert app.config["SEEN"] == [1.0, 1.0, 1.0]  # in flight while streaming
    assert in_flight(registry) == 0
    assert value(registry, "http_server_response_body_size_bytes_count", **labels) == 0


def test_stream_that_fails_midway_carries_the_error(registry: CollectorRegistry) -> None:
    app = _stream_app(registry, fail=True)
    data, error = _call_wsgi(app, "/events")
    assert isinstance(error, ConnectionError) and data == b"data: 0\n\n"
    labels = {
        "http_request_method": "GET",
        "http_route": "/events",
        "http_response_status_code": "200",
        "url_scheme": "http",
        "error_type": "ConnectionError",
    }
    assert value(registry, "http_server_request_duration_seconds_count", **labels) == 1
    assert total_requests(registry) == 1
    assert in_flight(registry) == 0


def test_error_pages_are_not_streams(client: FlaskClient, registry: CollectorRegistry) -> None:
    # Flask turns an HTTPException into an iterable of declared length: it is
    # recorded at teardown, also when a test never closes the response.
    client.get("/nope")
    assert requests_counted(registry, "", 404) == 1
    assert (
        value(
            registry,
            "http_server_response_body_size_bytes_count",
            http_request_method="GET",
            http_route="",
            http_response_status_code="404",
            url_scheme="http",
            error_type="",
        )
        == 1
    )


def test_excluded_streamed_template_is_not_measured(registry: CollectorRegistry) -> None:
    """stream_template renders after the first teardown: the request stays excluded."""
    from flask import stream_template_string

    app = make_app()

    @app.get("/report")
    @exclude
    def report() -> t.Any:
        return stream_template_string("{% for n in range(3) %}{{ n }}{% endfor %}")

    SignalMetrics(app, registry=registry)
    response = app.test_client().get("/report")
    assert response.get_data() == b"012"
    response.close()
    renders = "flask_template_render_duration_seconds_count"
    assert value(registry, renders, template="__string__") == 0
    assert total_requests(registry) == 0


#: (method, path, body, headers, recorded in one call from the second time)
_SHAPES: list[tuple[str, str, bytes | None, dict[str, str], bool]] = [
    ("GET", "/item/7", None, {}, True),
    ("POST", "/echo", b"x" * 300, {}, True),
    ("PUT", "/echo", b"", {}, True),
    ("GET", "/nope", None, {}, False),  # no route
    ("GET", "/abort", None, {}, False),  # an error page: its body is an iterator
    ("GET", "/handled", None, {}, True),  # an exception its handler answered
    ("GET", "/boom", None, {}, False),
    ("GET", "/unavailable", None, {}, False),  # a 5xx
    ("HEAD", "/item/7", None, {}, False),
    ("OPTIONS", "/item/7", None, {}, True),
    ("GET", "/stream", None, {}, False),
    ("GET", "/plainstream", None, {}, False),
    ("GET", "/page", None, {}, True),
    ("GET", "/item/7", None, {"Content-Length": "12x"}, True),
    ("GET", "/item/7", None, {"Transfer-Encoding": "chunked"}, True),
    ("BREW", "/item/7", None, {}, False),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "fast"), _SHAPES)
def test_repeated_requests_are_recorded_as_the_first(
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    fast: bool,
) -> None:
    """The one-call path of a route's later requests records what the whole way did."""
    app = make_app()
    SignalMetrics(app, registry=registry, serve_default_registry=False)
    client = app.test_client()
    whole_way: list[int] = []
    tear_down = request_receivers.tear_down

    def counted(*args: t.Any) -> None:
        whole_way.append(1)
        tear_down(*args)

    monkeypatch.setattr(request_receivers, "tear_down", counted)

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        # Everything but the durations' sums and buckets, which are timings.
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect()
            for s in metric.samples
            if not (s.name.startswith("http_server_request_duration") and "count" not in s.name)
            and not s.name.startswith(("flask_template_render_duration", "flask_response_ready"))
            and not s.name.endswith("_created")
        }

    def send() -> None:
        with contextlib.suppress(ValueError):
            client.open(path, method=method, data=body, headers=headers).close()

    send()
    first = samples()
    send()
    send()
    assert samples() == {
        key: count if key[0].startswith("flask_signal_metrics_info") else 3 * count
        for key, count in first.items()
    }
    assert in_flight(registry) == 0
    if fast:
        assert len(whole_way) == 1
    else:  # a stream_with_context body is torn down twice on Flask 3.1
        assert len(whole_way) >= 3


def test_routes_kept_for_one_step_are_bounded(
    client: FlaskClient, app: Flask, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What _on_request_started looks up inline is what State.route keeps, and no more."""
    monkeypatch.setattr(state_module, "MAX_ROUTES", 5)
    client.get("/item/1")
    client.get("/item/1")
    (key,) = get_state(app).routes
    assert key[1:] == ("GET", "http", "")
    for n in range(20):  # a proxy may set the script name from a header
        client.get("/item/1", environ_overrides={"SCRIPT_NAME": f"/m{n}"})
    assert len(get_state(app).routes) == 5
    assert requests_counted(registry, "/m19/item/<int:item_id>", 200) == 1
    assert total_requests(registry) == 22


def test_statuses_recorded_in_one_call_are_bounded(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording, "MAX_RECORDERS", 4)
    app = make_app()

    @app.get("/status/<int:code>")
    def status(code: int) -> tuple[str, int]:
        return "ok", code

    SignalMetrics(app, registry=registry, serve_default_registry=False)
    client = app.test_client()
    for code in [*range(200, 210), *range(200, 210)]:
        client.get(f"/status/{code}")
    (route,) = get_state(app).routes.values()
    assert sorted(route.recorders) == [200, 201, 202, 203]
    for code in range(200, 210):
        assert requests_counted(registry, "/status/<int:code>", code) == 2


def test_overflowed_series_are_not_recorded_in_one_call(registry: CollectorRegistry) -> None:
    app = make_app()
    app.config["SIGNAL_METRICS_MAX_SERIES"] = 1
    SignalMetrics(app, registry=registry, serve_default_registry=False)
    client = app.test_client()
    for _ in range(3):
        client.get("/item/1")
        client.get("/dir/")
    (item, directory) = get_state(app).routes.values()
    assert list(item.recorders) == [200] and not directory.recorders
    assert requests_counted(registry, "/item/<int:item_id>", 200) == 3
    overflow = dict.fromkeys(http_labels("", 0), OVERFLOW)
    assert value(registry, "http_server_request_duration_seconds_count", **overflow) == 3


@pytest.mark.parametrize("status", [200, 204, 418, 599])
def test_the_status_code_is_read_as_werkzeug_keeps_it(status: int) -> None:
    # The installed Werkzeug's own attribute, not the property.
    assert repr(_compat.status_code) == "operator.attrgetter('_status_code')"
    response = Response("x")
    response.status_code = status
    assert _compat.status_code(response) == response.status_code == status
    response.status = f"{status} Whatever"
    assert _compat.status_code(response) == status


def test_excluded_paths_of_a_route_kept_for_one_step_are_not_measured(
    registry: CollectorRegistry,
) -> None:
    app = make_app()
    app.config["SIGNAL_METRICS_EXCLUDE"] = [r"/item/1\d*"]
    SignalMetrics(app, registry=registry, serve_default_registry=False)
    client = app.test_client()
    for path in ["/item/2", "/item/2", "/item/15", "/item/1", "/item/3"]:
        assert client.get(path).status_code == 200
    assert len(get_state(app).routes) == 1
    assert requests_counted(registry, "/item/<int:item_id>", 200) == 3
    assert in_flight(registry) == 0


def test_a_request_class_that_changes_the_method_is_labelled_by_it(
    registry: CollectorRegistry,
) -> None:
    """The route kept for one step is the request's, not the raw environ's (a review)."""

    class Overridden(FlaskRequest):
        def __init__(self, environ: dict[str, t.Any], *args: t.Any, **kwargs: t.Any) -> None:
            super().__init__(environ, *args, **kwargs)
            self.method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", self.method)

    app = make_app()
    app.request_class = Overridden
    app.add_url_rule("/any", "any", lambda: "ok", methods=["POST", "PUT", "DELETE"])
    SignalMetrics(app, registry=registry, serve_default_registry=False)
    client = app.test_client()
    for override in ["PUT", "PUT", "DELETE", None]:
        client.post("/any", headers={"X-HTTP-Method-Override": override} if override else {})
    for method, count in [("PUT", 2), ("DELETE", 1), ("POST", 1)]:
        assert requests_counted(registry, "/any", 200, method=method) == count


def test_head_in_either_case_records_the_body_the_server_sends(
    client: FlaskClient, registry: CollectorRegistry
) -> None:
    # Werkzeug drops the body for "HEAD" only; both are labelled HEAD.
    for method in ["head", "HEAD", "head", "HEAD", "HEAD"]:
        client.open("/item/7", method=method)
    labels = http_labels("/item/<int:item_id>", 200, method="HEAD")
    assert value(registry, "http_server_response_body_size_bytes_count", **labels) == 5
    assert value(registry, "http_server_response_body_size_bytes_sum", **labels) == 2 * len(
        "item 7"
    )
