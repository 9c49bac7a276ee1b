"""The one-step teardown and the recorders it uses: the same as the whole way."""

from __future__ import annotations

import contextlib
import typing as t

import pytest
from flask import Flask
from flask import Request as FlaskRequest
from flask import Response
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry

from flask_signal_metrics import _compat
from flask_signal_metrics import SignalMetrics
from flask_signal_metrics import state as state_module
from flask_signal_metrics.labels import OVERFLOW
from flask_signal_metrics.receivers import recording
from flask_signal_metrics.receivers import requests as request_receivers
from flask_signal_metrics.state import get_state

from ..conftest import http_labels
from ..conftest import in_flight
from ..conftest import make_app
from ..conftest import requests_counted
from ..conftest import total_requests
from ..conftest import value

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


@pytest.mark.parametrize("views", [False, True], ids=["defaults", "view-metrics"])
@pytest.mark.parametrize(("method", "path", "body", "headers", "fast"), _SHAPES)
def test_repeated_requests_are_recorded_as_the_first(
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    fast: bool,
    views: bool,
) -> None:
    """The one-call path of a route's later requests records what the whole way did.

    With view metrics on every view too: those are recorded alike both ways.
    """
    app = make_app()
    ext = SignalMetrics(registry=registry, serve_default_registry=False)
    if views:
        ext.register_default(
            ext.counter("by_status", "By status.", {"status": lambda r: r.status_code}),
            ext.histogram("view_seconds", "Durations."),
            ext.gauge("view_now", "In progress."),
        )
    ext.init_app(app)
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
            if not (
                s.name.startswith(("http_server_request_duration", "view_seconds"))
                and "count" not in s.name
            )
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
    if views:  # a view's requests only: not a 404's or a 405's (no view)
        has_view = path != "/nope" and method != "BREW"
        assert sum(v for (name, _), v in first.items() if name == "by_status_total") == has_view
        assert value(registry, "view_now") == 0
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
