"""Hostile and odd requests: the response is the app's own, /metrics keeps answering."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from flask import signals
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

from flask_signal_metrics import SignalMetrics

from .conftest import make_app
from .conftest import total_requests


def _call(app: Flask, environ: dict[str, t.Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    captured: dict[str, t.Any] = {}

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Callable[[bytes], object]:
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    body_iter = app.wsgi_app(environ.copy(), start_response)
    try:
        body = b"".join(body_iter)
    finally:
        close = getattr(body_iter, "close", None)
        if close is not None:
            close()
    return captured["status"], captured["headers"], body


def _environ(method: str = "GET", path: str = "/", **headers: str) -> dict[str, t.Any]:
    environ = EnvironBuilder(path="/", method="GET", headers=list(headers.items())).get_environ()
    environ["REQUEST_METHOD"] = method
    environ["PATH_INFO"] = path  # WSGI strings are latin-1 decoded bytes
    return environ


CASES = [
    ("garbage method", _environ("G\x00E\xffT", "/item/1")),
    ("overlong method", _environ("X" * 10_000, "/item/1")),
    ("lower-case method", _environ("get", "/item/1")),
    ("non-UTF-8 path", _environ("GET", "/item/\xff\xfe\xc3")),
    ("non-UTF-8 unknown path", _environ("GET", "/\xff" * 50)),
    ("very long path", _environ("GET", "/a" * 50_000)),
    ("very long known path", _environ("GET", "/item/" + "9" * 5000)),
    ("path traversal", _environ("GET", "/../../etc/passwd")),
    ("odd Accept", _environ("GET", "/item/1", Accept=";;;q=banana,,")),
    ("raising view", _environ("GET", "/boom")),
    ("handled error", _environ("GET", "/handled")),
    ("bad Content-Length", _environ("POST", "/echo", **{"Content-Length": "-5"})),
    ("huge Content-Length", _environ("GET", "/item/1", **{"Content-Length": "9" * 40})),
]


@pytest.mark.parametrize(("name", "environ"), CASES, ids=[c[0] for c in CASES])
def test_response_is_the_apps_own(name: str, environ: dict[str, t.Any]) -> None:
    bare = make_app()
    app = make_app()
    registry = CollectorRegistry()
    SignalMetrics(app, registry=registry)
    expected = _call(bare, environ)
    got = _call(app, environ)
    assert got == expected
    assert total_requests(registry) == 1
    status, _, body = _call(app, _environ("GET", "/metrics"))
    assert status.startswith("200")
    assert b"http_server_request_duration_seconds_count" in body


@pytest.mark.parametrize("accept", ["", ",", "*/*;q=", "application/openmetrics-text;version="])
def test_metrics_answers_any_accept(accept: str) -> None:
    app = make_app()
    SignalMetrics(app, registry=CollectorRegistry())
    status, _, _ = _call(app, _environ("GET", "/metrics", Accept=accept))
    assert status.startswith("200")


def _raise(sender: Flask, **extra: object) -> None:
    raise RuntimeError("a user's receiver")


def test_users_raising_receiver_behaves_as_without_us() -> None:
    # Flask's behaviour with a raising receiver is Flask's: we change nothing.
    bare, app = make_app(), make_app()
    SignalMetrics(app, registry=CollectorRegistry())
    for a in (bare, app):
        signals.request_finished.connect(_raise, sender=a)
    try:
        assert _call(app, _environ("GET", "/item/1")) == _call(bare, _environ("GET", "/item/1"))
    finally:
        for a in (bare, app):
            signals.request_finished.disconnect(_raise, sender=a)


def test_thousands_of_unknown_paths_same_responses() -> None:
    bare, app = make_app(), make_app()
    registry = CollectorRegistry()
    SignalMetrics(app, registry=registry)
    for n in range(2000):
        environ = _environ("GET", f"/probe/{n}/.env")
        assert _call(app, environ) == _call(bare, environ)
    assert total_requests(registry) == 2000
