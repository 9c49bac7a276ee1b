"""The opt-in OTLP set-up: :func:`configure_otlp` and the handle it returns.

Everything started here runs off the request path: spans go through the
SDK's batch processor, metrics through the bridge (:mod:`.bridge`).
"""

from __future__ import annotations

import atexit
import collections.abc as cabc
import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

from . import environment
from . import exporters
from .bridge import MetricsBridge

logger = logging.getLogger("flask_signal_metrics")


class OTLPExport:
    """What :func:`configure_otlp` started; ``shutdown()`` flushes and stops it."""

    def __init__(self, tracer_provider: TracerProvider | None, bridge: MetricsBridge | None):
        self.tracer_provider = tracer_provider
        self.metrics = bridge
        self._shut = False

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Send every span and the current metric values now."""
        ok = True
        if self.tracer_provider is not None:
            ok = self.tracer_provider.force_flush(timeout_millis)
        if self.metrics is not None:
            ok = self.metrics.export() and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop (also run at interpreter exit, e.g. when a worker exits).

        The spans are flushed and the tracer provider shut down whatever the
        metrics side does: a failure there is logged, never raised past them.
        """
        if self._shut:
            return
        self._shut = True
        try:
            if self.metrics is not None:
                self.metrics.shutdown()
        except Exception:
            logger.warning("OTLP metrics shutdown raised", exc_info=True)
        finally:
            if self.tracer_provider is not None:
                self.tracer_provider.shutdown()


def configure_otlp(*, traces: bool = True, metrics: bool = True) -> OTLPExport:
    """Export spans and metrics over OTLP, configured by the standard variables.

    Sets the global tracer provider (an SDK ``TracerProvider`` with a batch
    processor; its resource from ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES``, its sampler from ``OTEL_TRACES_SAMPLER``) and
    starts the metrics bridge (every ``OTEL_METRIC_EXPORT_INTERVAL`` ms, 60000
    by default). Endpoints, headers, timeouts (seconds, as the Python
    exporters read them) and compression come from ``OTEL_EXPORTER_OTLP_*``;
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or the per-signal variable) picks
    ``http/protobuf`` (default) or ``grpc``.

    Safe before a fork (gunicorn's ``preload_app``): each worker re-creates the
    export threads and gets its own ``service.instance.id``.

    With ``OTEL_SDK_DISABLED=true`` it starts nothing, sets no global and
    returns a handle whose ``shutdown()`` and ``force_flush()`` do nothing.

    Every variable is read, and every exporter built, before anything is set
    or started: after an error nothing is left half-started, and calling it
    again once the variable is fixed works.

    :raises ValueError: a variable has a value this helper cannot use.
    :raises RuntimeError: a global tracer provider is already set.
    """
    env = os.environ
    if environment.sdk_disabled(env):
        return OTLPExport(None, None)
    span_transport = environment.transport(env, "TRACES") if traces else None
    metric_transport = environment.transport(env, "METRICS") if metrics else None
    interval = (
        environment.env_int(env, "OTEL_METRIC_EXPORT_INTERVAL", 60000, unit=" (milliseconds)")
        / 1000
    )
    timeout = (
        environment.env_int(env, "OTEL_METRIC_EXPORT_TIMEOUT", 30000, unit=" (milliseconds)") / 1000
    )
    batching = environment.batching(env) if traces else {}
    sampler = environment.sampler(env) if traces else None
    if traces and not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        raise RuntimeError(
            "A global TracerProvider is already set, and OpenTelemetry allows only"
            " one; call configure_otlp(traces=False) and add an OTLP exporter to"
            " your provider yourself, or drop your own set-up."
        )
    # The exporters read (and may refuse) the variables left to them when built.
    span_exporter = exporters.span_exporter(span_transport) if span_transport is not None else None
    metric_exporter = (
        exporters.metric_exporter(metric_transport) if metric_transport is not None else None
    )
    provider = None
    if span_exporter is not None and sampler is not None:
        # Last, as its batch processor starts its thread when built.
        provider = _tracer_provider(span_exporter, sampler, batching)
        trace.set_tracer_provider(provider)
    bridge = None
    if metric_exporter is not None:
        bridge = MetricsBridge(metric_exporter, _ProcessResource(provider), interval, timeout)
        bridge.start()
    handle = OTLPExport(provider, bridge)
    atexit.register(handle.shutdown)
    return handle


def _tracer_provider(
    exporter: SpanExporter, sampler: Sampler, batching: cabc.Mapping[str, int]
) -> TracerProvider:
    """An SDK provider sending spans through a batch processor (its thread started)."""
    capacity = batching["OTEL_BSP_MAX_QUEUE_SIZE"]
    queue = exporters.QueueCounter(capacity)
    # Shut down by the handle (at exit too), after the last metrics.
    provider = TracerProvider(sampler, shutdown_on_exit=False)
    provider.add_span_processor(queue)
    provider.add_span_processor(
        BatchSpanProcessor(
            exporters.CountedExporter(exporter, queue),
            max_queue_size=capacity,
            schedule_delay_millis=batching["OTEL_BSP_SCHEDULE_DELAY"],
            max_export_batch_size=batching["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"],
            export_timeout_millis=batching["OTEL_BSP_EXPORT_TIMEOUT"],
        )
    )
    return provider


class _ProcessResource:
    """The resource of this process: the tracer provider's, or one made per pid."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self._provider = provider
        self._pid = -1
        self._resource = Resource.get_empty()

    def __call__(self) -> Resource:
        if self._provider is not None:
            return self._provider.resource  # the SDK renews it in a forked child
        if self._pid != os.getpid():
            self._resource = Resource.create()  # a new service.instance.id per process
            self._pid = os.getpid()
        return self._resource
