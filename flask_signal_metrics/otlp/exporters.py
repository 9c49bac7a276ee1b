"""The OTLP exporters, built from checked settings, and the counting of what they lose."""

from __future__ import annotations

import collections.abc as cabc
import logging
import threading
import typing as t

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from ..forks import at_fork
from ..state import INSTANCES
from .environment import ENDPOINTS

if t.TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter

    from .environment import Transport

logger = logging.getLogger("flask_signal_metrics")


def span_exporter(transport: Transport) -> SpanExporter:
    """The OTLP span exporter of ``transport``'s protocol (gRPC's imported only if chosen)."""
    if transport.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc(**_grpc_options(transport))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http(**_http_options(transport))


def metric_exporter(transport: Transport) -> MetricExporter:
    """The OTLP metric exporter of ``transport``'s protocol."""
    if transport.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as Grpc,
        )

        return Grpc(**_grpc_options(transport))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

    return Http(**_http_options(transport))


# The timeout, compression and gRPC endpoint go in as checked: read by the
# gRPC exporters themselves, 'none' and empty values would fail there.
# Headers and certificates each exporter reads from the variables.


def _grpc_options(transport: Transport) -> dict[str, t.Any]:
    return {
        "endpoint": transport.endpoint or ENDPOINTS["grpc"],
        "timeout": transport.timeout,
        "compression": _grpc_compression(transport.compression),
    }


def _http_options(transport: Transport) -> dict[str, t.Any]:
    from opentelemetry.exporter.otlp.proto.http import Compression

    # No endpoint: the exporter appends /v1/traces or /v1/metrics to the general one itself.
    return {"timeout": transport.timeout, "compression": Compression(transport.compression)}


def _grpc_compression(name: str) -> t.Any:
    import grpc  # type: ignore[import-untyped]  # the exporter's dependency; no type hints

    return {"gzip": grpc.Compression.Gzip, "none": grpc.Compression.NoCompression}[name]


def count_dropped(signal: str, reason: str, amount: int) -> None:
    """Count telemetry the export lost, on every app's /metrics (export is per process)."""
    if amount > 0:
        for state in list(INSTANCES):  # enabled apps only: each has metrics
            state.metrics.otlp_dropped.child((signal, reason)).inc(amount)  # type: ignore[union-attr]


class CountedExporter(SpanExporter):
    """The exporter, counting the spans of batches that failed (they are lost)."""

    def __init__(self, exporter: SpanExporter, queue: QueueCounter) -> None:
        self._exporter = exporter
        self._queue = queue

    def export(self, spans: cabc.Sequence[ReadableSpan]) -> SpanExportResult:
        self._queue.left(len(spans))
        try:
            result = self._exporter.export(spans)
        except Exception:
            logger.warning("OTLP span export raised; %d spans dropped", len(spans), exc_info=True)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            count_dropped("traces", "export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class QueueCounter(SpanProcessor):
    """Counts the spans the batch processor's full queue drops.

    The SDK's batch processor keeps sampled spans in a deque of
    ``max_queue_size`` and, when it is full, drops the oldest; it reports this
    only in a log line. Counting spans in and out here gives the number
    without reaching into its internals.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._queued = 0
        self._lock = threading.Lock()
        at_fork(self._forked)

    def _forked(self) -> None:
        # The batch processor empties its queue in a forked child.
        self._lock = threading.Lock()
        self._queued = 0

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return  # the batch processor ignores these too
        with self._lock:
            full = self._queued >= self._capacity
            if not full:
                self._queued += 1
        if full:
            count_dropped("traces", "queue_full", 1)

    def left(self, amount: int) -> None:
        with self._lock:
            self._queued = max(self._queued - amount, 0)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # holds nothing (older SDKs' base class answers None)
