"""The request signals' receivers: each outcome counted once, sizes, contexts, labels."""

from __future__ import annotations

import contextlib
import threading
import typing as t

import pytest
from flask import copy_current_request_context
from flask import Flask
from flask import Response
from flask import signals
from flask import url_for
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry

from flask_signal_metrics import exclude
from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.state import get_state

from ..conftest import add_copying_view
from ..conftest import http_labels
from ..conftest import in_flight
from ..conftest import make_app
from ..conftest import make_excluding_app
from ..conftest import requests_counted
from ..conftest import total_requests
from ..conftest import value


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
