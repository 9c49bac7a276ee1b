"""Streamed responses: measured until the server closes the body."""

from __future__ import annotations

import typing as t

from flask import Flask
from flask import Response
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry

from flask_signal_metrics import exclude
from flask_signal_metrics import SignalMetrics

from ..conftest import in_flight
from ..conftest import make_app
from ..conftest import requests_counted
from ..conftest import total_requests
from ..conftest import value


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
