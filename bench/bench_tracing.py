"""Per-request cost of metrics plus tracing, side by side with the peers, in one process.

The app of bench_requests.py, called as a WSGI app with a sampled W3C
``traceparent`` on every request; rounds interleaved in a new random order,
overheads per round against bare Flask, medians printed (see bench_requests.py).

    python bench/bench_tracing.py [--requests N] [--rounds R]

Variants:
  bare       Flask with nothing connected
  metrics    SignalMetrics(tracing=False): metrics only
  nosdk      SignalMetrics with no SDK configured (the global proxy provider)
  unsampled  SignalMetrics with an SDK provider whose sampler drops the trace
  full       SignalMetrics with an SDK provider: a sampled server span per
             request, exported through the BatchSpanProcessor (to an exporter
             that discards, so no network is timed), exemplars on
  second     full, plus the request recorded a second time into OTel SDK
             instruments (duration histogram, active requests): the cost the
             OTLP metrics bridge avoids
  floor      the least a span costs: a bare SDK server span with the semconv
             attributes, header extraction and context attach, started and
             ended from two receivers (request_started, request_tearing_down),
             through the same provider and batch processor; no metrics
  floor0     the same floor with the unsampling provider of "unsampled": what
             any design pays for a span that is not sampled
  dropmin    a reference, not shipped: "unsampled" with the SDK's
             Tracer.start_span replaced, for dropped spans, by the least it
             must do (ask the sampler, make a span id and the span context,
             count the SDK's own span metric): what re-implementing the SDK's
             drop path would save
  peers      prometheus-flask-exporter and opentelemetry-instrumentation-flask
             together (OTEL_SEMCONV_STABILITY_OPT_IN=http, the same tracer
             provider, an SDK meter provider for its metrics)
  floor_duration
             floor, plus the duration recorded a request into an SDK meter
             provider's histogram: the least any design pays that records
             the HTTP server metrics through the OTel metrics API
  floor_otf  floor_duration, plus the active-requests up-down counter added
             to at both ends: the SDK's share of what otf_auto records
  ours_auto  SignalMetricsInstrumentor().instrument_app(app, tracer_provider=,
             meter_provider=): the extension as opentelemetry-instrument
             installs it (Prometheus metrics and /metrics, a sampled span,
             the HTTP server metrics into the SDK meter provider)
  otf_auto   opentelemetry-instrumentation-flask's FlaskInstrumentor().instrument_app
             with the same providers: the package ours_auto replaces
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import types
import typing as t

os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")  # before contrib's import

from bench_requests import _app
from bench_requests import arguments
from bench_requests import measure
from bench_requests import run_round as run_round  # what bench_instructions.py drives
from flask import Flask
from flask import signals
from opentelemetry import context
from opentelemetry import propagate
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

from flask_signal_metrics import SignalMetrics

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Discard(SpanExporter):
    """Counts what the batch processor hands over, and sends nothing."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: t.Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def _provider(sampled: bool = True) -> tuple[TracerProvider, Discard]:
    exporter = Discard()
    provider = TracerProvider(sampler=None if sampled else ALWAYS_OFF, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


Built = tuple[Flask, t.Any]


def bare() -> Built:
    return _app(), None


def metrics() -> Built:
    app = _app()
    SignalMetrics(app, registry=CollectorRegistry(), serve_default_registry=False, tracing=False)
    return app, None


def nosdk() -> Built:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    app = _app()
    SignalMetrics(app, registry=CollectorRegistry(), serve_default_registry=False)
    return app, None


def unsampled() -> Built:
    app = _app()
    provider, exporter = _provider(sampled=False)
    SignalMetrics(
        app, registry=CollectorRegistry(), serve_default_registry=False, tracer_provider=provider
    )
    return app, (provider, exporter)


def full() -> Built:
    app = _app()
    provider, exporter = _provider()
    SignalMetrics(
        app, registry=CollectorRegistry(), serve_default_registry=False, tracer_provider=provider
    )
    return app, (provider, exporter)


def second() -> Built:
    from opentelemetry.semconv._incubating.metrics import http_metrics

    app, handle = full()
    meter = MeterProvider([InMemoryMetricReader()], shutdown_on_exit=False).get_meter("second")
    duration = http_metrics.create_http_server_request_duration(meter)
    active = http_metrics.create_http_server_active_requests(meter)

    def started(sender: Flask, **extra: object) -> None:
        from flask_signal_metrics._compat import current_context as _cv_request

        environ = _cv_request.get().request.environ
        active.add(1, {"http.request.method": "GET", "url.scheme": "http"})
        environ["second.start"] = time.perf_counter()

    def ended(sender: Flask, **extra: object) -> None:
        from flask_signal_metrics._compat import current_context as _cv_request

        environ = _cv_request.get().request.environ
        attributes: dict[str, str | int] = {
            "http.request.method": "GET",
            "http.route": "/item/<int:item_id>",
            "http.response.status_code": 200,
            "url.scheme": "http",
        }
        duration.record(time.perf_counter() - environ["second.start"], attributes)
        active.add(-1, {"http.request.method": "GET", "url.scheme": "http"})

    signals.request_started.connect(started, sender=app, weak=False)
    signals.request_tearing_down.connect(ended, sender=app, weak=False)
    return app, handle


def floor(sampled: bool = True, histograms: int = 0, adds: bool = False) -> Built:
    """The least a span costs; with ``histograms`` or ``adds``, the least its metrics do too.

    ``histograms``: duration-like records a request into an SDK meter
    provider's histograms, with the conventions' attributes, the span
    current (its exemplar offered); ``adds``: the active-requests up-down
    counter added to at both ends, as OTF does.
    """
    from flask_signal_metrics._compat import current_context as _cv_request

    app = _app()
    provider, exporter = _provider(sampled)
    tracer = provider.get_tracer("floor")
    meter = _meters().get_meter("floor")
    recorded = [meter.create_histogram(f"floor.h{i}", unit="s") for i in range(histograms)]
    active = meter.create_up_down_counter("floor.active")
    lane = {"http.request.method": "GET", "url.scheme": "http"}

    def started(sender: Flask, **extra: object) -> None:
        request = _cv_request.get().request
        parent = propagate.extract(request.headers)
        rule = request.url_rule
        route = rule.rule if rule is not None else ""
        attributes = {
            "http.request.method": request.method,
            "url.path": request.path,
            "url.scheme": request.scheme,
            "http.route": route,
            "server.address": request.host,
            "client.address": request.remote_addr,
            "network.protocol.version": "1.1",
            "user_agent.original": request.environ.get("HTTP_USER_AGENT", ""),
        }
        span = tracer.start_span(f"{request.method} {route}", parent, SpanKind.SERVER, attributes)
        token = context.attach(trace.set_span_in_context(span, parent))
        if adds:
            active.add(1, lane)
        request.environ["floor.span"] = (span, token, time.perf_counter())

    def ended(sender: Flask, **extra: object) -> None:
        span, token, start = _cv_request.get().request.environ.pop("floor.span")
        if recorded or adds:
            duration = time.perf_counter() - start
            attributes: dict[str, str | int] = {
                **lane,
                "http.route": "/item/<int:item_id>",
                "http.response.status_code": 200,
                "network.protocol.version": "1.1",
            }
            for histogram in recorded:
                histogram.record(duration, attributes)
            if adds:
                active.add(-1, lane)
        span.set_attribute("http.response.status_code", 200)
        span.end()
        context.detach(token)

    signals.request_started.connect(started, sender=app, weak=False)
    signals.request_tearing_down.connect(ended, sender=app, weak=False)
    return app, (provider, exporter)


def floor0() -> Built:
    return floor(sampled=False)


def dropmin() -> Built:
    from opentelemetry.sdk.trace import Tracer
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import NonRecordingSpan
    from opentelemetry.trace import SpanContext
    from opentelemetry.trace import TraceFlags

    app, handle = unsampled()
    provider = handle[0]
    sdk_start_span = Tracer.start_span
    not_sampled = TraceFlags(TraceFlags.DEFAULT)
    random_id = TraceFlags(TraceFlags.DEFAULT | TraceFlags.RANDOM_TRACE_ID)

    def start_span(
        self: Tracer,
        name: str,
        context: context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: t.Any = None,
        links: t.Any = (),
        start_time: int | None = None,
        **options: t.Any,
    ) -> trace.Span:
        # The SDK's decision and ids, without the rest of its start_span.
        parent = trace.get_current_span(context).get_span_context()
        if self._is_enabled() and parent.is_valid:
            result = self.sampler.should_sample(
                context, parent.trace_id, name, kind, attributes, links
            )
            if result.decision is Decision.DROP:
                flags = random_id if parent.trace_flags.random_trace_id else not_sampled
                span_id = self.id_generator.generate_span_id()
                span = SpanContext(parent.trace_id, span_id, False, flags, result.trace_state)
                self._tracer_metrics.start_span(parent, result.decision)
                return NonRecordingSpan(span)
        return sdk_start_span(self, name, context, kind, attributes, links, start_time, **options)

    get_tracer = provider.get_tracer

    def patched(*args: t.Any, **kwargs: t.Any) -> t.Any:
        tracer = get_tracer(*args, **kwargs)
        tracer.start_span = types.MethodType(start_span, tracer)
        return tracer

    provider.get_tracer = patched
    return app, handle


def peers() -> Built:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from prometheus_flask_exporter import PrometheusMetrics

    app = _app()
    provider, exporter = _provider()
    meters = MeterProvider([InMemoryMetricReader()], shutdown_on_exit=False)
    PrometheusMetrics(app, registry=CollectorRegistry())
    FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call]
        app, tracer_provider=provider, meter_provider=meters
    )
    return app, (provider, exporter)


def _meters() -> MeterProvider:
    """An SDK meter provider whose reader is never collected: nothing exported during the run."""
    return MeterProvider([InMemoryMetricReader()], shutdown_on_exit=False)


def floor_duration() -> Built:
    return floor(histograms=1)


def floor_otf() -> Built:
    return floor(histograms=1, adds=True)


def ours_auto() -> Built:
    from flask_signal_metrics.compat.opentelemetry import SignalMetricsInstrumentor

    app = _app()
    provider, exporter = _provider()
    SignalMetricsInstrumentor().instrument_app(
        app, tracer_provider=provider, meter_provider=_meters()
    )
    return app, (provider, exporter)


def otf_auto() -> Built:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    app = _app()
    provider, exporter = _provider()
    FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call]
        app, tracer_provider=provider, meter_provider=_meters()
    )
    return app, (provider, exporter)


VARIANTS: dict[str, t.Callable[[], Built]] = {
    "bare": bare,
    "metrics": metrics,
    "nosdk": nosdk,
    "unsampled": unsampled,
    "full": full,
    "second": second,
    "floor": floor,
    "floor0": floor0,
    "dropmin": dropmin,
    "peers": peers,
    "floor_duration": floor_duration,
    "floor_otf": floor_otf,
    "ours_auto": ours_auto,
    "otf_auto": otf_auto,
}


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, VARIANTS, argv)

    environ = EnvironBuilder(
        path="/item/42", method="GET", headers=[("traceparent", TRACEPARENT)]
    ).get_environ()
    apps = {name: VARIANTS[name]() for name in args.only}
    times = measure({name: app for name, (app, _) in apps.items()}, environ, args)

    print(f"{args.rounds} rounds x {args.requests} requests of GET /item/42 with a sampled")
    print("traceparent, one process; overhead = variant - bare in the same round (medians)")
    base = times.get("bare")
    over: dict[str, float] = {}
    print(f"{'variant':10} {'us/req':>8} {'overhead':>9}")
    for name, values in times.items():
        us = statistics.median(values) * 1e6
        if base is not None:
            over[name] = statistics.median((v - b) * 1e6 for v, b in zip(values, base, strict=True))
            print(f"{name:10} {us:8.2f} {over[name]:9.2f}")
        else:
            print(f"{name:10} {us:8.2f}")

    def ratio(a: str, b: str, label: str) -> None:
        if a in over and b in over and over[b] > 0:
            print(f"{label:44} {over[a] / over[b]:.3f}")

    ratio("full", "peers", "full / peers (target <= 0.30)")
    ratio("ours_auto", "otf_auto", "ours_auto / otf_auto (target <= 0.30)")
    ratio("floor", "peers", "floor / peers (a bare SDK span)")
    ratio("unsampled", "metrics", "unsampled / metrics only (target <= 2)")
    ratio("floor0", "metrics", "unsampled floor / metrics only")
    ratio("dropmin", "metrics", "unsampled, least drop path / metrics only")
    ratio("nosdk", "metrics", "no SDK / metrics only (target <= 1.2)")
    if "second" in over and "full" in over:
        extra = over["second"] - over["full"]
        print(f"{'a second recording into OTel instruments':44} +{extra:.2f} us")

    failed = 0
    for name, (_, handle) in apps.items():
        if handle is None:
            continue
        provider, exporter = handle
        provider.force_flush()
        sampled = name not in ("unsampled", "floor0", "dropmin")
        expected = 500 + args.rounds * args.requests if sampled else 0
        if name != "peers" and exporter.spans != expected:
            print(
                f"MISMATCH: {name} exported {exporter.spans} spans of {expected}", file=sys.stderr
            )
            failed = 1
        provider.shutdown()
    if "full" in apps:
        print(f"full exported {apps['full'][1][1].spans} spans (one per request)")
    return failed


if __name__ == "__main__":
    sys.exit(main())
