from __future__ import annotations

import os
import shutil
import socket
import threading
import typing as t
from pathlib import Path

import pytest
from flask import abort
from flask import copy_current_request_context
from flask import flash
from flask import Flask
from flask import render_template_string
from flask import Response
from flask import stream_with_context
from flask.testing import FlaskClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from flask_signal_metrics import exclude
from flask_signal_metrics import SignalMetrics

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class HandledError(Exception):
    pass


def make_app(name: str = "test_app") -> Flask:
    """A bare app with one route of every shape; no extension."""
    app = Flask(name)
    app.config.update(SECRET_KEY="test")

    @app.errorhandler(HandledError)
    def handled(error: HandledError) -> tuple[str, int]:
        return "handled", 409

    @app.get("/item/<int:item_id>")
    def item(item_id: int) -> str:
        return f"item {item_id}"

    @app.route("/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def echo() -> bytes:
        from flask import request

        return request.get_data()

    @app.get("/abort")
    def aborts() -> str:
        abort(404)

    @app.get("/handled")
    def handled_view() -> str:
        raise HandledError()

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("boom")

    @app.get("/unavailable")
    def unavailable() -> tuple[str, int]:
        return "down", 503

    @app.get("/dir/")
    def directory() -> str:
        return "dir"

    @app.get("/page")
    def page() -> str:
        flash("saved", "success")
        flash("plain")
        return render_template_string("<p>{{ n }}</p>", n=1)

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> t.Iterator[str]:
            yield "a"
            yield "b"

        return Response(stream_with_context(chunks()))

    @app.get("/plainstream")
    def plainstream() -> Response:
        return Response(iter([b"x", b"y"]))

    return app


def make_excluding_app() -> Flask:
    """The test app with the exclusion rule's three ways: SIGNAL_METRICS_EXCLUDE and @exclude."""
    app = make_app()
    app.config["SIGNAL_METRICS_EXCLUDE"] = [r"/item/1\d*", "/page"]

    @app.get("/healthz")
    @exclude
    def healthz() -> str:
        return "ok"

    return app


def add_copying_view(app: Flask) -> None:
    """``/work`` hands a copy of its request context to a thread and joins it."""

    @app.get("/work")
    def work() -> str:
        @copy_current_request_context
        def job() -> None:
            pass

        worker = threading.Thread(target=job)
        worker.start()
        worker.join(10)
        return "done"


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry per test."""
    return CollectorRegistry()


class Blocking:
    """A collector whose ``collect()`` waits for ``release`` (at most 30 s); counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        self.calls += 1
        calls = self.calls
        self.entered.set()
        self.release.wait(30)
        return [GaugeMetricFamily("blocking_renders", "This collector's renders.", value=calls)]


@pytest.fixture
def blocking(registry: CollectorRegistry) -> t.Iterator[Blocking]:
    """A :class:`Blocking` collector in ``registry``, released at the end of the test."""
    collector = Blocking()
    registry.register(collector)
    yield collector
    collector.release.set()


@pytest.fixture
def app(registry: CollectorRegistry) -> Flask:
    app = make_app()
    SignalMetrics(app, registry=registry, serve_default_registry=False)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def in_flight(registry: CollectorRegistry, method: str = "GET", scheme: str = "http") -> float:
    """``http_server_active_requests`` of one method and scheme."""
    return value(
        registry, "http_server_active_requests", http_request_method=method, url_scheme=scheme
    )


def http_labels(
    route: str, status: int, method: str = "GET", error: str = "", scheme: str = "http"
) -> dict[str, str]:
    return {
        "http_request_method": method,
        "http_route": route,
        "http_response_status_code": str(status),
        "url_scheme": scheme,
        "error_type": error,
    }


def requests_counted(registry: CollectorRegistry, route: str, status: int, **kw: str) -> float:
    return value(
        registry, "http_server_request_duration_seconds_count", **http_labels(route, status, **kw)
    )


def total_requests(registry: CollectorRegistry) -> float:
    total = 0.0
    for metric in registry.collect():
        if metric.name == "http_server_request_duration_seconds":
            total += sum(s.value for s in metric.samples if s.name.endswith("_count"))
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def real_binary(name: str) -> str:
    """A binary from Debian's prometheus package, unpacked by .ci/setup.

    In CI a missing binary fails the test; elsewhere it skips with the fix.
    """
    found = shutil.which(name) or shutil.which(
        str(ROOT / ".cache" / "prometheus" / "usr" / "bin" / name)
    )
    if found is None:
        message = f"{name} not found: run .ci/setup (it unpacks Debian's prometheus)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


class Traced(t.NamedTuple):
    """An app traced through its own SDK provider, and what it exported."""

    app: Flask
    client: FlaskClient
    exporter: InMemorySpanExporter
    provider: TracerProvider
    registry: CollectorRegistry

    def spans(self, kind: SpanKind | None = SpanKind.SERVER) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if kind is None or s.kind == kind]


def memory_provider(sampler: Sampler | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    """An SDK provider exporting to memory synchronously."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


MakeTraced = t.Callable[..., Traced]


@pytest.fixture
def make_traced(registry: CollectorRegistry) -> t.Iterator[MakeTraced]:
    """Build a traced app, each with a fresh SDK provider exporting to memory.

    ``make_traced(app=None, sampler=None, **extension_options)``.
    """
    providers: list[TracerProvider] = []

    def make(app: Flask | None = None, sampler: Sampler | None = None, **options: t.Any) -> Traced:
        provider, exporter = memory_provider(sampler)
        providers.append(provider)
        app = make_app() if app is None else app
        options.setdefault("serve_default_registry", False)
        SignalMetrics(app, registry=registry, tracer_provider=provider, **options)
        return Traced(app, app.test_client(), exporter, provider, registry)

    yield make
    for provider in providers:
        provider.shutdown()


@pytest.fixture
def traced(make_traced: MakeTraced) -> Traced:
    return make_traced()


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private multiprocess directory in ``PROMETHEUS_MULTIPROC_DIR`` (mode 0700)."""
    directory = tmp_path / "multiproc"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    return directory
