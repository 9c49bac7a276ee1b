"""Hostile and odd requests: the response is the app's own, /metrics keeps answering."""

from __future__ import annotations

import io
import itertools
import random
import threading
import typing as t

import pytest
from flask import Flask
from flask import signals
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

from flask_signal_metrics import SignalMetrics

from .conftest import in_flight
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


# -- random requests, with and without the extension ------------------------

_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get", "BREW", "X" * 300]
_PATHS = [
    "/item/1", "/item/007", "/item/-1", "/item/x", "/echo", "/abort", "/handled", "/boom",
    "/unavailable", "/dir", "/dir/", "/page", "/stream", "/plainstream", "/", "/nope/.env",
    "/item/\xff", "//item/1", "/item/1/", "/" + "a" * 3000,
]  # fmt: skip
_TRACEPARENTS = [
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what",
    "garbage",
    "\xff" * 200,
]
_HEADERS = [
    ("tracestate", "a=1,b=2"),
    ("tracestate", "=,=,\xff"),
    ("baggage", "k=v;p=1,%zz"),
    ("baggage", "=" * 500),
    ("Content-Length", "-3"),
    ("Content-Length", "12x"),
    ("Transfer-Encoding", "chunked"),
    ("Accept", "*/*;q=banana"),
    ("Host", "[::1]:8080"),
    ("Host", "\xff:99999"),
    ("X-Forwarded-For", "1.2.3.4, \xff"),
    ("User-Agent", "\x00" * 40),
]


def _random_environ(rng: random.Random) -> dict[str, t.Any]:
    headers = [("traceparent", rng.choice(_TRACEPARENTS))] if rng.random() < 0.7 else []
    headers += rng.sample(_HEADERS, rng.randint(0, 3))
    body = rng.choice([b"", b"hello", b"\xff" * 700])
    environ = EnvironBuilder(path="/", method="POST", data=body).get_environ()
    for name, header in headers:
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_LENGTH",) else "HTTP_" + key] = header
    environ["REQUEST_METHOD"] = rng.choice(_METHODS)
    environ["PATH_INFO"] = rng.choice(_PATHS)
    environ["QUERY_STRING"] = rng.choice(["", "a=1", "sig=secret&x=%ff", "&&=="])
    environ["test.body"] = body
    return environ


def _each(app: Flask, environ: dict[str, t.Any]) -> t.Any:
    """The response, comparable: the body read from a fresh stream each time."""
    environ = {**environ, "wsgi.input": io.BytesIO(environ["test.body"])}
    status, headers, body = _call(app, environ)
    # A flashed message's session cookie is signed with the second it was
    # made in: compare that it is set, not its value.
    named = sorted((k, "<cookie>" if k == "Set-Cookie" else v) for k, v in headers)
    return status, named, body


@pytest.mark.parametrize("tracing", ["off", "sampled", "unsampled"])
def test_random_requests_get_the_apps_own_responses(tracing: str) -> None:
    # Hundreds of random combinations of method, path, trace headers, other
    # headers and bodies: each response is the bare app's, every request is
    # counted once and ended, no receiver fails, nothing stays current.
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from .conftest import memory_provider

    bare, app = make_app(), make_app()
    registry = CollectorRegistry()
    provider, exporter = memory_provider(ALWAYS_OFF if tracing == "unsampled" else None)
    options: dict[str, t.Any] = (
        {"tracing": False} if tracing == "off" else {"tracer_provider": provider}
    )
    SignalMetrics(app, registry=registry, **options)
    rng = random.Random(20261122)
    n = 1000
    dropped = 0  # by the default sampler: a valid parent that was not sampled
    for _ in range(n):
        environ = _random_environ(rng)
        dropped += environ.get("HTTP_TRACEPARENT", "").endswith("b7ad6b7169203331-00")
        assert _each(app, environ) == _each(bare, environ), environ
        assert not trace.get_current_span().get_span_context().is_valid
    assert total_requests(registry) == n
    families = {metric.name: metric.samples for metric in registry.collect()}
    # each family exists with series: an empty one would make the checks hold vacuously
    active = families["http_server_active_requests"]
    assert active and {s.value for s in active} == {0.0}
    errors = [
        s for s in families["flask_signal_metrics_receiver_errors"] if s.name.endswith("_total")
    ]
    assert errors and [s for s in errors if s.value] == []
    servers = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(servers) == (n - dropped if tracing == "sampled" else 0)
    provider.shutdown()


@pytest.mark.parametrize("tracing", ["off", "sampled"])
def test_random_partial_reads_of_bodies(tracing: str) -> None:
    # Clients that go away: each body read for 0, 1 or all chunks, then
    # closed, in random order with plain requests. The bytes read are the
    # bare app's; once closed, every request is counted and over.
    from opentelemetry import trace

    from .conftest import memory_provider

    bare, app = make_app(), make_app()
    registry = CollectorRegistry()
    provider, exporter = memory_provider()
    options: dict[str, t.Any] = (
        {"tracing": False} if tracing == "off" else {"tracer_provider": provider}
    )
    SignalMetrics(app, registry=registry, **options)
    rng = random.Random(11)
    n = 300
    for _ in range(n):
        environ = EnvironBuilder(
            path=rng.choice(["/stream", "/plainstream", "/item/1", "/boom", "/page"]),
            method=rng.choice(["GET", "HEAD"]),
        ).get_environ()
        chunks = rng.choice([0, 1, 99])
        read = []
        for target in (app, bare):
            body = target.wsgi_app(environ.copy(), lambda *args: lambda data: None)
            got = list(itertools.islice(body, chunks))
            getattr(body, "close", lambda: None)()
            read.append(got)
        assert read[0] == read[1]
        assert not trace.get_current_span().get_span_context().is_valid
    assert total_requests(registry) == n
    assert in_flight(registry) == 0 and in_flight(registry, "HEAD") == 0
    servers = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(servers) == (n if tracing == "sampled" else 0)
    provider.shutdown()


def test_random_requests_in_threads_keep_their_own_context() -> None:
    # 8 threads of random requests on one traced app: each SERVER span's
    # parent is its own request's traceparent (remote) or none, never another
    # request's span; every render's parent is a SERVER span of its trace.
    from .conftest import memory_provider

    app = make_app()
    registry = CollectorRegistry()
    provider, exporter = memory_provider()
    SignalMetrics(app, registry=registry, tracer_provider=provider)
    per_thread = 150
    failures: list[BaseException] = []

    def run(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(per_thread):
                _each(app, _random_environ(rng))
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and not any(thread.is_alive() for thread in threads)
    assert total_requests(registry) == 8 * per_thread
    assert in_flight(registry) == 0
    spans = exporter.get_finished_spans()
    servers = {s.context.span_id: s for s in spans if s.kind == SpanKind.SERVER}
    for span in servers.values():
        assert span.parent is None or span.parent.is_remote, span.attributes
    renders = [s for s in spans if s.kind == SpanKind.INTERNAL]
    assert renders
    for render in renders:
        assert render.parent is not None and render.parent.span_id in servers
        assert servers[render.parent.span_id].context.trace_id == render.context.trace_id
    provider.shutdown()
