"""OTLP export proven on a real collector (rotel), and on collectors that fail."""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import typing as t
import urllib.request
from pathlib import Path

import pytest
from blinker import Namespace
from flask import Flask
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram
from prometheus_client.parser import text_string_to_metric_families

from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.config import DURATION_BUCKETS

from .conftest import free_port
from .conftest import http_labels
from .conftest import make_app
from .conftest import memory_provider
from .conftest import ROOT
from .conftest import value
from .servers import example_shop
from .servers import Rotel
from .servers import rotel

if t.TYPE_CHECKING:
    from flask_signal_metrics.otlp import MetricsBridge

pytestmark = pytest.mark.real

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
N = 50
#: What the driver's requests answer, N // 5 times over: the app's own statuses.
STATUSES = [200, 200, 200, 500, 404] * (N // 5)


def driver(mode: str, n: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "otlp_driver.py"), mode, str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def finish(process: subprocess.Popen[str], seconds: float = 120) -> dict[str, t.Any]:
    """The driver's JSON result; the driver is killed if it outlives ``seconds``."""
    try:
        out, err = process.communicate(timeout=seconds)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
    assert process.returncode == 0, err
    return t.cast("dict[str, t.Any]", json.loads(out.splitlines()[-1]))


def otlp_env(collector: Rotel, protocol: str) -> dict[str, str]:
    endpoint = collector.grpc if protocol == "grpc" else collector.http
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=ci",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # only the explicit flushes export
    }


def latest(points: list[dict[str, t.Any]], metric: str) -> list[dict[str, t.Any]]:
    """The last point of each series (cumulative: each export repeats the totals)."""
    found: dict[t.Any, dict[str, t.Any]] = {}
    for point in points:
        if point["metric"] == metric:
            key = (
                point["resource"].get("service.instance.id"),
                repr(sorted(point["attributes"].items())),
            )
            found[key] = point
    return list(found.values())


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a /metrics text: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_and_metrics_arrive_at_rotel(tmp_path: Path, protocol: str) -> None:
    with rotel(tmp_path) as collector:
        result = finish(driver("requests", N, otlp_env(collector, protocol)))
        assert result["flushed"] is True
        assert result["statuses"] == STATUSES
        collector.wait(lambda c: len(c.spans()) >= N + N // 5, 30, f"{N} server spans")
        collector.wait(
            lambda c: any(p["metric"] == "http.server.request.duration" for p in c.points()),
            30,
            "the duration histogram",
        )
        spans, points = collector.spans(), collector.points()
    servers = [s for s in spans if s["kind"] == "SPAN_KIND_SERVER"]
    assert len(servers) == N
    assert {s["name"] for s in servers} == {
        "GET /item/<int:item_id>",
        "GET /page",
        "GET /boom",
        "GET",
    }
    assert {s["trace_id"] for s in servers} == {TRACE_ID}
    assert {s["parent_id"] for s in servers} == {PARENT_ID}
    boom = next(s for s in servers if s["name"] == "GET /boom")
    assert boom["attributes"]["error.type"] == "ValueError"
    assert boom["attributes"]["http.response.status_code"] == 500
    assert boom["status_code"] == "STATUS_CODE_ERROR"
    item = next(s for s in servers if s["name"] == "GET /item/<int:item_id>")
    assert item["attributes"]["http.route"] == "/item/<int:item_id>"
    assert item["attributes"]["url.path"] in ("/item/1", "/item/2")
    assert item["attributes"]["http.request.method"] == "GET"
    assert item["resource"]["service.name"] == "shop"
    assert item["resource"]["deployment.environment.name"] == "ci"
    renders = [s for s in spans if s["name"] == "render __string__"]
    assert len(renders) == N // 5
    assert {s["parent_id"] for s in renders} <= {s["id"] for s in servers}

    # OTLP carries the same counts and sums as /metrics.
    prom = scraped(result["metrics"])
    durations = latest(points, "http.server.request.duration")
    assert {p["unit"] for p in durations} == {"s"}
    for point in durations:
        a = point["attributes"]
        key = (
            ("error_type", a.get("error.type", "")),
            ("http_request_method", a["http.request.method"]),
            ("http_response_status_code", str(a["http.response.status_code"])),
            ("http_route", a.get("http.route", "")),
            ("url_scheme", a["url.scheme"]),
        )
        assert point["count"] == prom[("http_server_request_duration_seconds_count", key)]
        assert point["sum"] == pytest.approx(
            prom[("http_server_request_duration_seconds_sum", key)]
        )
    assert sum(p["count"] for p in durations) == N
    # The /metrics exemplars travel too: each links to a server span rotel got.
    exemplars = [e for p in durations for e in p.get("exemplars", [])]
    assert exemplars and {e["Trace ID"] for e in exemplars} == {TRACE_ID}
    assert {e["Span ID"] for e in exemplars} <= {s["id"] for s in servers}
    (shown,) = latest(points, "flask_signal_page_shown")  # a declared app signal
    assert shown["value"] == N // 5 == prom[("flask_signal_page_shown_total", ())]
    names = {p["metric"] for p in points}
    assert {"http.server.active_requests", "flask.request.exceptions",
            "flask.template.render.duration", "flask.flashed_messages"} <= names  # fmt: skip


class Stuck:
    """A collector that accepts connections and never answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = self._server.accept()
                self._open.append(connection)
                self.accepted.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self._open:
            connection.close()
        self._server.close()


def dropped(text: str, signal_: str, reason: str) -> float:
    key = ("flask_signal_metrics_otlp_dropped_total", (("reason", reason), ("signal", signal_)))
    return scraped(text).get(key, 0.0)


def test_a_stuck_collector_never_holds_a_request() -> None:
    stuck = Stuck()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stuck.port}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
            "OTEL_BSP_MAX_QUEUE_SIZE": "10",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "5",
        }
        process = driver("blocked", N, env)
        try:
            assert process.stdout is not None and process.stdin is not None
            ready, _, _ = select.select([process.stdout], [], [], 30)
            assert ready and process.stdout.readline().strip() == "exporting"
            assert stuck.accepted.wait(30), "the export never connected"
            process.stdin.write("go\n")
            process.stdin.flush()
        finally:
            result = finish(process)
    finally:
        stuck.close()
    # Every request was answered while the export was stuck on the collector.
    assert result["statuses"] == STATUSES
    assert result["still_exporting"] is True
    text = result["metrics"]
    assert dropped(text, "metrics", "export_failed") > 0
    assert dropped(text, "traces", "export_failed") > 0
    # With the exports stuck, a queue of 10 overflowed: counted, not blocking.
    assert dropped(text, "traces", "queue_full") > 0


@contextlib.contextmanager
def refusing(status: int) -> t.Iterator[str]:
    """An OTLP endpoint answering every export with ``status``; 0: nothing listens."""
    if not status:
        yield f"http://127.0.0.1:{free_port()}"
        return
    from http.server import BaseHTTPRequestHandler
    from http.server import ThreadingHTTPServer

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: t.Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [0, 400, 503], ids=["down", "400", "503"])
def test_a_refusing_or_absent_collector_is_counted(status: int) -> None:
    with refusing(status) as endpoint:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        }
        result = finish(driver("requests", N, env))
    assert result["statuses"] == STATUSES
    assert result["flushed"] is False
    assert dropped(result["metrics"], "traces", "export_failed") == N + N // 5
    assert dropped(result["metrics"], "metrics", "export_failed") > 0


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_preloaded_workers_each_export_and_flush_at_exit(tmp_path: Path, worker_class: str) -> None:
    """gunicorn --preload, 3 workers: configure_otlp ran in the master, before the fork.

    Export is held back (60 s intervals), so what arrives is what each worker
    flushed when it exited on SIGTERM. The spans come from at least two
    service.instance.ids (which workers the kernel hands connections to is
    not ours to fix), and the workers' counts add up to /metrics'.
    """
    n = 60
    with rotel(tmp_path) as collector:
        env = {
            **otlp_env(collector, "http/protobuf"),
            "OTEL_BSP_SCHEDULE_DELAY": "60000",
            "WEB_CONCURRENCY": "3",
            "WORKER_CLASS": worker_class,
        }
        with example_shop(tmp_path, "--graceful-timeout", "10", "--preload", env=env) as shop:
            base = shop.base
            # Concurrent clients on a route that takes 20 ms: every worker serves.
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(_get, [f"{base}/slow?ms=20"] * n))
            assert statuses == [200] * n
            text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
            served = sum(
                value
                for (name, labels), value in scraped(text).items()
                if name == "http_server_request_duration_seconds_count"
                and dict(labels)["http_route"] == "/slow"
            )
            assert served == n
        # gunicorn stopped (SIGTERM): every worker exited normally and flushed.
        collector.wait(
            lambda c: len([s for s in c.spans() if s["name"].startswith("GET /slow")]) >= n,
            30,
            f"{n} spans flushed at exit",
        )
        collector.wait(
            lambda c: (
                sum(
                    p["count"]
                    for p in c.points()
                    if p["metric"] == "http.server.request.duration"
                    and p["attributes"].get("http.route") == "/slow"
                )
                >= n
            ),
            30,
            "the workers' final metrics",
        )
        spans, points = collector.spans(), collector.points()
    products = [s for s in spans if s["name"].startswith("GET /slow")]
    assert len(products) == n
    instances = {s["resource"]["service.instance.id"] for s in products}
    assert len(instances) >= 2  # more than one worker served, each its own id
    durations = [
        p
        for p in latest(points, "http.server.request.duration")
        if p["attributes"].get("http.route") == "/slow"
    ]
    per_instance: dict[str, int] = {}
    for point in durations:
        instance = point["resource"]["service.instance.id"]
        per_instance[instance] = per_instance.get(instance, 0) + point["count"]
    assert set(per_instance) == instances
    assert sum(per_instance.values()) == n  # each worker its own series; they add up


def test_a_second_global_provider_is_refused_with_the_fix() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    result = finish(driver("twice", 0, env))
    assert "A global TracerProvider is already set" in result["refused"]
    assert "configure_otlp(traces=False)" in result["refused"]
    assert result["metrics_only"] is True


# -- without a collector: the bridge driven directly, configure_otlp refusing ----------

#: The threads configure_otlp starts: the batch span processor's and the bridge's.
EXPORT_THREADS = {"OtelBatchSpanRecordProcessor", "flask-signal-metrics-otlp"}


def export_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name in EXPORT_THREADS]


class Sink(MetricExporter):
    """A metric exporter that encodes what it gets as the OTLP exporters do, and keeps it."""

    def __init__(self, shutdown_raises: bool = False) -> None:
        super().__init__()
        self.sent: list[t.Any] = []
        self._shutdown_raises = shutdown_raises

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: t.Any
    ) -> MetricExportResult:
        self.sent.append(encode_metrics(metrics_data))
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: t.Any) -> None:
        if self._shutdown_raises:
            raise OSError("the exporter's connection broke")


class Failing:
    """A collector of the user's, in the app's registry, that raises while ``on``.

    Only when the bridge's thread reads it: the test reads the same registry.
    """

    on = True

    def collect(self) -> t.Iterator[t.Any]:
        if self.on and threading.current_thread().name == "flask-signal-metrics-otlp":
            raise RuntimeError("the user's collector broke")
        yield from ()


def bridge(exporter: MetricExporter, interval: float = 600) -> MetricsBridge:
    """A bridge of this process's apps (started by the test only when it says so)."""
    from opentelemetry.sdk.resources import Resource

    from flask_signal_metrics.otlp import MetricsBridge

    return MetricsBridge(exporter, Resource.get_empty, interval, 5)


def wait_for(condition: t.Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def collect_failed(registry: CollectorRegistry) -> float:
    return value(
        registry,
        "flask_signal_metrics_otlp_dropped_total",
        signal="metrics",
        reason="collect_failed",
    )


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [("req-42", ""), ("ab" * 32, PARENT_ID), (TRACE_ID, "span-7")],
    ids=["not-hex", "too-long", "bad-span"],
)
def test_exemplars_without_w3c_ids_are_left_out(
    app: Flask, registry: CollectorRegistry, trace_id: str, span_id: str
) -> None:
    """A user's histogram may label exemplars ``trace_id`` as it likes; its points still go."""
    jobs = Histogram("job_seconds", "A job.", registry=registry, buckets=(1, 10))
    jobs.observe(0.3, exemplar={"trace_id": trace_id, "span_id": span_id})
    jobs.observe(5, exemplar={"trace_id": TRACE_ID, "span_id": PARENT_ID})
    sink = Sink()
    assert bridge(sink).export() is True
    (request,) = sink.sent
    (point,) = [
        point
        for metric in request.resource_metrics[0].scope_metrics[0].metrics
        if metric.name == "job_seconds"
        for point in metric.histogram.data_points
    ]
    assert point.count == 2
    assert [(e.trace_id.hex(), e.span_id.hex()) for e in point.exemplars] == [(TRACE_ID, PARENT_ID)]


def test_a_failing_reading_is_counted_logged_once_and_the_bridge_goes_on(
    app: Flask, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    failing = Failing()
    registry.register(failing)
    sink = Sink()
    running = bridge(sink, interval=0.02)
    running.start()
    try:
        assert wait_for(lambda: collect_failed(registry) >= 3), "failed readings not counted"
        assert running._thread is not None and running._thread.is_alive()
        failing.on = False  # the next reading succeeds: the same thread sends it
        assert wait_for(lambda: len(sink.sent) >= 1), "the bridge stopped after a failure"
    finally:
        running.shutdown()
        registry.unregister(failing)
    logged = [r for r in caplog.records if "reading the registries raised" in r.getMessage()]
    assert len(logged) == 1


def test_shutdown_ends_the_spans_even_when_the_metrics_side_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace import TracerProvider

    from flask_signal_metrics.otlp import OTLPExport

    class Seen(SpanProcessor):
        shut = False

        def shutdown(self) -> None:
            self.shut = True

    seen = Seen()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(seen)
    OTLPExport(provider, bridge(Sink(shutdown_raises=True))).shutdown()
    assert seen.shut, "the tracer provider was not shut down: its last spans are lost"
    assert any("OTLP metrics shutdown raised" in r.getMessage() for r in caplog.records)


def exported(sink: Sink, metric: str) -> list[t.Any]:
    """The points of one metric in the last export the sink got."""
    for found in sink.sent[-1].resource_metrics[0].scope_metrics[0].metrics:
        if found.name == metric:
            return list(getattr(found, found.WhichOneof("data")).data_points)
    return []


def attributes(point: t.Any) -> dict[str, t.Any]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in point.attributes}


@pytest.mark.parametrize(
    ("route", "buckets"),
    [("/twin", None), ("/twin-buckets", [0.001, 0.5, 1.0, 5.0, 60.0])],
    ids=["same-buckets", "other-buckets"],  # the route per case: apps of the other may linger
)
def test_the_same_route_in_two_apps_is_one_point_their_sum(
    route: str, buckets: list[float] | None
) -> None:
    """Two points of one attribute set in a resource are an invalid OTLP stream."""
    requests = {"one": 3, "two": 4}
    apps, scrapes, spans, providers = [], [], [], []  # the apps kept: the bridge holds none
    try:
        for name, n in requests.items():
            app = make_app(name)
            apps.append(app)
            app.add_url_rule(route, "twin", lambda: "twin")
            if buckets is not None and name == "two":
                app.config["SIGNAL_METRICS_BUCKETS"] = buckets
            provider, exporter = memory_provider()
            providers.append(provider)
            SignalMetrics(app, serve_default_registry=False, tracer_provider=provider)
            client = app.test_client()
            for _ in range(n):
                assert client.get(route).status_code == 200
            scrapes.append(scraped(client.get("/metrics").get_data(as_text=True)))
            spans += [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
        sink = Sink()
        assert bridge(sink).export() is True
    finally:
        for provider in providers:
            provider.shutdown()
    (point,) = [
        p
        for p in exported(sink, "http.server.request.duration")
        if attributes(p).get("http.route") == route
    ]
    key = tuple(sorted(http_labels(route, 200).items()))
    count, total = (
        sum(s[(f"http_server_request_duration_seconds_{suffix}", key)] for s in scrapes)
        for suffix in ("count", "sum")
    )
    assert point.count == count == sum(requests.values())  # the apps' /metrics, added
    assert point.sum == pytest.approx(total)
    # Other bounds: both apps' buckets add up on the bounds they share.
    assert list(point.explicit_bounds) == ([0.5, 1.0, 5.0] if buckets else list(DURATION_BUCKETS))
    assert sum(point.bucket_counts) == point.count
    # One exemplar per bucket, the latest: the last request's among them.
    kept = [bisect.bisect_left(point.explicit_bounds, e.as_double) for e in point.exemplars]
    assert len(kept) == len(set(kept)) >= 1
    assert spans[-1].context.span_id in {int.from_bytes(e.span_id, "big") for e in point.exemplars}


def test_a_declared_signal_of_an_extension_on_two_apps_is_sent_once() -> None:
    """Its registry is shared by both apps, and read once per export, not once per app."""
    saved = Namespace().signal("otlp-shared-saved")
    ext = SignalMetrics(serve_default_registry=False)
    ext.count(saved)
    apps = [make_app("one"), make_app("two")]
    for app in apps:
        ext.init_app(app)
    sends = 5
    for _ in range(sends):
        saved.send(None)
    sink = Sink()
    assert bridge(sink).export() is True
    (point,) = exported(sink, "flask_signal_otlp_shared_saved")
    for app in apps:
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert scraped(text)[("flask_signal_otlp_shared_saved_total", ())] == sends
    assert point.as_double == sends


def test_values_of_the_process_each_app_repeats_are_sent_once() -> None:
    """Each app counts every loss of the process's export, and has the info gauge: not added."""
    from flask_signal_metrics.otlp import _dropped

    # A label of this test's own: apps other tests left behind have series of their own.
    ours = {"case": "per-process"}
    apps = []  # kept: the bridge holds no app
    for name in ("one", "two"):
        app = make_app(name)
        app.config["SIGNAL_METRICS_LABELS"] = ours
        SignalMetrics(app, serve_default_registry=False)
        apps.append(app)
    _dropped("traces", "export_failed", 1)
    sink = Sink()
    assert bridge(sink).export() is True
    lost = {**ours, "reason": "export_failed", "signal": "traces"}
    for app in apps:  # each app's /metrics shows the one loss
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert scraped(text)[("flask_signal_metrics_otlp_dropped_total", tuple(lost.items()))] == 1

    def sent(metric: str, wanted: dict[str, str]) -> list[float]:
        points = exported(sink, metric)
        return [p.as_double for p in points if wanted.items() <= attributes(p).items()]

    assert sent("flask_signal_metrics.otlp.dropped", lost) == [1]
    assert sent("flask_signal_metrics_info", ours) == [1]


SAMPLER, ARG = "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"
RATIO_REFUSED = "must be a number from 0 to 1"
OTLP = "OTEL_EXPORTER_OTLP_"
SECONDS = "must be a positive number of seconds, e.g. 10 (the Python OTLP exporters read seconds"
HEADER_REFUSED = "is not a name=value pair the exporters can send, and would be dropped"
NOT_A_URL = "is not a URL the exporter can send to"


def refused(environ: dict[str, str], message: str, id: str) -> t.Any:
    """A case of configure_otlp refusing ``environ`` with a ValueError saying ``message``."""
    return pytest.param(environ, ValueError, message, id=id)


@pytest.mark.parametrize(
    ("environ", "error", "message"),
    [
        refused(
            {OTLP + "METRICS_PROTOCOL": "grpc", OTLP + "METRICS_COMPRESSION": "bogus"},
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION='bogus' is not a compression the grpc"
            " exporter can use; use one of none, gzip",
            id="grpc-compression",
        ),
        refused(
            {OTLP + "TRACES_PROTOCOL": "grpc", OTLP + "COMPRESSION": "deflate"},
            "OTEL_EXPORTER_OTLP_COMPRESSION='deflate' is not a compression the grpc",
            id="grpc-deflate",
        ),
        refused(
            {OTLP + "COMPRESSION": "brotli"},
            "OTEL_EXPORTER_OTLP_COMPRESSION='brotli' is not a compression the http/protobuf"
            " exporter can use; use one of none, gzip, deflate",
            id="http-compression",
        ),
        refused({OTLP + "TIMEOUT": "10s"}, "OTEL_EXPORTER_OTLP_TIMEOUT='10s' " + SECONDS, id="10s"),
        refused({OTLP + "TRACES_TIMEOUT": "0"}, "TRACES_TIMEOUT='0' " + SECONDS, id="timeout-0"),
        refused(
            {OTLP + "METRICS_TIMEOUT": "-5"}, "METRICS_TIMEOUT='-5' " + SECONDS, id="timeout-neg"
        ),
        refused(
            {OTLP + "PROTOCOL": "grpc", OTLP + "TRACES_TIMEOUT": ""},
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT is set but empty, which the gRPC exporter cannot"
            " read; unset it",
            id="grpc-empty-timeout",
        ),
        refused(
            {OTLP + "HEADERS": "api-key=abc123,Authorization Bearer xyz"},
            "OTEL_EXPORTER_OTLP_HEADERS: header 2 " + HEADER_REFUSED,
            id="header-without-equals",
        ),
        refused(
            {OTLP + "METRICS_HEADERS": 'authorization="Bearer xyz"'},
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS: header 1 ('authorization') " + HEADER_REFUSED,
            id="header-quoted",
        ),
        refused(
            {OTLP + "ENDPOINT": "localhost:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT='localhost:4318' " + NOT_A_URL + ": give the scheme"
            " (http, or https for TLS), the host and the port, e.g. 'http://localhost:4318'",
            id="endpoint-without-scheme",
        ),
        refused({OTLP + "ENDPOINT": "ftp://collector"}, NOT_A_URL, id="endpoint-ftp"),
        refused(
            {OTLP + "PROTOCOL": "grpc", OTLP + "ENDPOINT": "http://collector:43l7"},
            NOT_A_URL,
            id="grpc-bad-port",
        ),
        refused(
            {OTLP + "PROTOCOL": "grpc", OTLP + "ENDPOINT": "collector:43l7"},
            NOT_A_URL,
            id="grpc-target-bad-port",
        ),
        refused(
            {OTLP + "PROTOCOL": "grpc", OTLP + "ENDPOINT": "ftp://collector"},
            NOT_A_URL,
            id="grpc-ftp",
        ),
        refused({OTLP + "TRACES_ENDPOINT": "http://:4318/v1/traces"}, NOT_A_URL, id="no-host"),
        refused({OTLP + "METRICS_ENDPOINT": "http://collector:43l8"}, NOT_A_URL, id="bad-port"),
        refused(
            {"OTEL_BSP_SCHEDULE_DELAY": "5s"},
            "OTEL_BSP_SCHEDULE_DELAY must be a positive integer (milliseconds); got '5s'."
            " Unset it for 5000.",
            id="bsp-delay-5s",
        ),
        refused(
            {"OTEL_BSP_SCHEDULE_DELAY": "0"},
            "OTEL_BSP_SCHEDULE_DELAY must be a positive integer",
            id="bsp-delay-0",
        ),
        refused(
            {"OTEL_BSP_EXPORT_TIMEOUT": "-1"},
            "OTEL_BSP_EXPORT_TIMEOUT must be an integer, 0 or more (milliseconds)",
            id="bsp-timeout",
        ),
        refused(
            {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "0"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE must be a positive integer (spans)",
            id="bsp-batch-0",
        ),
        refused(
            {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE (4096) must not be larger than"
            " OTEL_BSP_MAX_QUEUE_SIZE (2048)",
            id="bsp-batch-above-queue",
        ),
        refused(
            {"OTEL_BSP_MAX_QUEUE_SIZE": "100"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE (512) must not be larger than"
            " OTEL_BSP_MAX_QUEUE_SIZE (100)",
            id="bsp-queue-below-batch",
        ),
        pytest.param(
            {SAMPLER: "always_onn"},
            ValueError,
            "OTEL_TRACES_SAMPLER='always_onn' is not a sampler; use one of always_on,"
            " always_off, traceidratio, parentbased_always_on, parentbased_always_off,"
            " parentbased_traceidratio",
            id="sampler",
        ),
        pytest.param(
            {SAMPLER: "traceidratio", ARG: "10%"},
            ValueError,
            "ARG='10%' " + RATIO_REFUSED,
            id="ratio-percent",
        ),
        pytest.param(
            {SAMPLER: "parentbased_traceidratio", ARG: "5"}, ValueError, RATIO_REFUSED, id="ratio-5"
        ),
        pytest.param(
            {SAMPLER: "traceidratio", ARG: "-0.1"}, ValueError, RATIO_REFUSED, id="ratio-negative"
        ),
        pytest.param(
            {SAMPLER: "TraceIdRatio", ARG: "nan"}, ValueError, RATIO_REFUSED, id="ratio-nan"
        ),
        pytest.param(
            {"OTEL_SDK_DISABLED": "1"},
            ValueError,
            "OTEL_SDK_DISABLED='1' must be 'true'",
            id="sdk-disabled-1",
        ),
    ],
)
def test_configure_otlp_refuses_before_setting_or_starting_anything(
    environ: dict[str, str], error: type[Exception], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused with nothing set or started: once the variable is fixed, a retry works."""
    from opentelemetry import trace

    from flask_signal_metrics import configure_otlp

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    for name, given in environ.items():
        monkeypatch.setenv(name, given)
    with pytest.raises(error, match=re.escape(message)):
        configure_otlp()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert export_threads() == []


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "ParentBased{root:AlwaysOnSampler,"),
        ({SAMPLER: "", ARG: ""}, "ParentBased{root:AlwaysOnSampler,"),  # empty is unset
        ({SAMPLER: " TraceIdRatio "}, "TraceIdRatioBased{1.0}"),
        ({SAMPLER: "traceidratio", ARG: " "}, "TraceIdRatioBased{1.0}"),
        (
            {SAMPLER: "parentbased_traceidratio", ARG: "0.25"},
            "ParentBased{root:TraceIdRatioBased{0.25},",
        ),
        ({SAMPLER: "always_off", ARG: "10%"}, "AlwaysOffSampler"),  # takes no argument
    ],
    ids=["unset", "empty", "case-and-spaces", "empty-arg", "ratio", "arg-ignored"],
)
def test_the_sampler_follows_the_specification(environ: dict[str, str], expected: str) -> None:
    """Empty is unset, names are case-insensitive, the ratio defaults to 1."""
    from flask_signal_metrics.otlp import _sampler

    assert _sampler(environ).get_description().startswith(expected)


@pytest.mark.parametrize("disabled", ["true", " TRUE "], ids=["true", "TRUE-spaced"])
def test_sdk_disabled_starts_nothing(disabled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    from flask_signal_metrics import configure_otlp

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_SDK_DISABLED", disabled)
    handle = configure_otlp()
    assert (handle.tracer_provider, handle.metrics) == (None, None)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert export_threads() == []
    assert handle.force_flush() is True
    handle.shutdown()  # nothing to stop


def test_a_refused_header_shows_no_value() -> None:
    """The value may be a secret, and the error may end in a log."""
    from flask_signal_metrics.otlp import _transport

    with pytest.raises(ValueError, match=HEADER_REFUSED) as info:
        _transport({OTLP + "HEADERS": "api-key=s3cr\u00e9t"}, "TRACES")
    assert "'api-key'" in str(info.value) and "s3cr" not in str(info.value)


@pytest.mark.parametrize(
    "target", ["collector:4317", "unix:///run/otel.sock", "http://collector:4317"]
)
def test_grpc_targets_are_taken_as_grpc_takes_them(target: str) -> None:
    """Without a scheme (with OTEL_EXPORTER_OTLP_INSECURE), or a unix socket."""
    from flask_signal_metrics.otlp import _span_exporter
    from flask_signal_metrics.otlp import _transport

    environ = {OTLP + "PROTOCOL": "grpc", OTLP + "TRACES_ENDPOINT": target}
    transport = _transport(environ, "TRACES")
    assert transport.endpoint == target
    _span_exporter(transport).shutdown()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_empty_exporter_variables_are_unset(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The specification's rule, which the gRPC exporters break when left to read them."""
    from flask_signal_metrics.otlp import _batching
    from flask_signal_metrics.otlp import _metric_exporter
    from flask_signal_metrics.otlp import _span_exporter
    from flask_signal_metrics.otlp import _transport
    from flask_signal_metrics.otlp import BATCHING

    settings = ("ENDPOINT", "HEADERS", "TIMEOUT", "COMPRESSION")
    for name in [OTLP + scope + s for scope in ("", "TRACES_", "METRICS_") for s in settings]:
        monkeypatch.setenv(name, "")
    for name in BATCHING:
        monkeypatch.setenv(name, "")
    monkeypatch.setenv(OTLP + "PROTOCOL", protocol)
    if protocol == "grpc":  # refused instead: see the case grpc-empty-timeout
        monkeypatch.delenv(OTLP + "TRACES_TIMEOUT")
        monkeypatch.delenv(OTLP + "METRICS_TIMEOUT")
    assert _batching(os.environ) == {key: default for key, (_, default, _) in BATCHING.items()}
    spans, metrics = _transport(os.environ, "TRACES"), _transport(os.environ, "METRICS")
    assert (spans.endpoint, spans.timeout, spans.compression) == (None, 10.0, "none")
    assert metrics == spans
    _span_exporter(spans).shutdown()
    _metric_exporter(metrics).shutdown()
