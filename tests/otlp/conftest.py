"""What the OTLP tests share: the driver process, a collector's readings, an in-memory sink."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import typing as t

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.metrics.export import MetricsData
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import free_port
from ..conftest import ROOT
from ..conftest import value
from ..servers import Rotel

if t.TYPE_CHECKING:
    from flask_signal_metrics.otlp.bridge import MetricsBridge


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

    from flask_signal_metrics.otlp.bridge import MetricsBridge

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


def exported(sink: Sink, metric: str) -> list[t.Any]:
    """The points of one metric in the last export the sink got."""
    for found in sink.sent[-1].resource_metrics[0].scope_metrics[0].metrics:
        if found.name == metric:
            return list(getattr(found, found.WhichOneof("data")).data_points)
    return []


def attributes(point: t.Any) -> dict[str, t.Any]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in point.attributes}


SAMPLER, ARG = "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"
RATIO_REFUSED = "must be a number from 0 to 1"
OTLP = "OTEL_EXPORTER_OTLP_"
SECONDS = "must be a positive number of seconds, e.g. 10 (the Python OTLP exporters read seconds"
HEADER_REFUSED = "is not a name=value pair the exporters can send, and would be dropped"
NOT_A_URL = "is not a URL the exporter can send to"


def refused(environ: dict[str, str], message: str, id: str) -> t.Any:
    """A case of configure_otlp refusing ``environ`` with a ValueError saying ``message``."""
    return pytest.param(environ, ValueError, message, id=id)
