"""OTLP export of spans and metrics: the only module importing the OpenTelemetry SDK.

Opt-in, through :func:`configure_otlp` (the ``[otlp]`` extra). Everything here
runs off the request path: spans go through the SDK's batch processor, and
metrics through a bridge thread that reads, every export interval, what the
receivers already recorded for ``/metrics`` and sends it as OTLP metrics under
the semantic conventions' names.

Why a bridge rather than recording every request a second time through an OTel
meter: recording the request into SDK instruments (a duration histogram and the
active-requests counter) costs about 250 000 instructions, 94 µs, more per
request on the CI machine (``bench/bench_tracing.py``, variant "second"),
several times the whole metrics path; the bridge costs the request nothing, and
OTLP and ``/metrics`` then agree by construction.
"""

from __future__ import annotations

import atexit
import bisect
import collections.abc as cabc
import dataclasses
import logging
import math
import operator
import os
import threading
import time
import traceback
import typing as t
import urllib.parse

from opentelemetry import trace
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.metrics.export import Gauge
from opentelemetry.sdk.metrics.export import Histogram
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from opentelemetry.sdk.metrics.export import Metric
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.metrics.export import ResourceMetrics
from opentelemetry.sdk.metrics.export import ScopeMetrics
from opentelemetry.sdk.metrics.export import Sum
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.trace.sampling import DEFAULT_OFF
from opentelemetry.sdk.trace.sampling import DEFAULT_ON
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv._incubating.metrics import http_metrics as incubating_http
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.semconv.attributes import http_attributes
from opentelemetry.semconv.attributes import url_attributes
from opentelemetry.semconv.metrics import http_metrics
from opentelemetry.util.re import parse_env_headers

from . import prometheus
from .extension import VERSION
from .forks import at_fork
from .prometheus import Reading
from .state import INSTANCES
from .tracing.spans import TRACER_NAME

if t.TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger("flask_signal_metrics")

#: The protocols the Python exporters speak. ``http/protobuf`` is the OTLP
#: specification's default.
PROTOCOLS = ("http/protobuf", "grpc")

#: Prometheus family -> (OTel metric name, UCUM unit). Classic naming's
#: duration maps to the same instrument; its request counter repeats the
#: histogram's count and is not sent.
NAMES: dict[str, tuple[str, str]] = {
    prometheus.DURATION: (http_metrics.HTTP_SERVER_REQUEST_DURATION, "s"),
    prometheus.CLASSIC_DURATION: (http_metrics.HTTP_SERVER_REQUEST_DURATION, "s"),
    "http_server_active_requests": (incubating_http.HTTP_SERVER_ACTIVE_REQUESTS, "{request}"),
    prometheus.REQUEST_SIZE: (incubating_http.HTTP_SERVER_REQUEST_BODY_SIZE, "By"),
    prometheus.RESPONSE_SIZE: (incubating_http.HTTP_SERVER_RESPONSE_BODY_SIZE, "By"),
    "flask_request_exceptions": ("flask.request.exceptions", "{exception}"),
    "flask_template_render_duration_seconds": ("flask.template.render.duration", "s"),
    "flask_flashed_messages": ("flask.flashed_messages", "{message}"),
    "flask_response_ready_duration_seconds": ("flask.response.ready.duration", "s"),
    prometheus.SERIES_OVERFLOW: ("flask_signal_metrics.series_overflow", "1"),
    prometheus.RECEIVER_ERRORS: ("flask_signal_metrics.receiver_errors", "{error}"),
    "flask_signal_metrics_otlp_dropped": ("flask_signal_metrics.otlp.dropped", "1"),
}
_SKIPPED = frozenset((prometheus.CLASSIC_COUNT,))
#: Values of the process that every app's registry repeats: the export's
#: losses (each app counts every one) and the version info (1 in each).
_PER_PROCESS = frozenset(
    ("flask_signal_metrics_otlp_dropped", "flask_signal_metrics_info", "flask_exporter_info")
)

#: Prometheus label -> OTel attribute, for the request metrics of both namings.
ATTRIBUTES: dict[str, str] = {
    "http_request_method": http_attributes.HTTP_REQUEST_METHOD,
    "http_route": http_attributes.HTTP_ROUTE,
    "http_response_status_code": http_attributes.HTTP_RESPONSE_STATUS_CODE,
    "url_scheme": url_attributes.URL_SCHEME,
    "error_type": error_attributes.ERROR_TYPE,
    "method": http_attributes.HTTP_REQUEST_METHOD,
    "path": http_attributes.HTTP_ROUTE,
    "status": http_attributes.HTTP_RESPONSE_STATUS_CODE,
}
_INTEGERS = frozenset((http_attributes.HTTP_RESPONSE_STATUS_CODE,))
#: Gauges that are UpDownCounters in the conventions (a non-monotonic sum).
_UP_DOWN = frozenset((incubating_http.HTTP_SERVER_ACTIVE_REQUESTS,))

_Attributes = dict[str, "str | int"]
#: A point's attribute set, hashable: what tells a metric's points apart.
_Key = frozenset[tuple[str, "str | int"]]


def _env_int(
    environ: cabc.Mapping[str, str], key: str, default: int, least: int = 1, unit: str = ""
) -> int:
    value = environ.get(key, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        kind = "a positive integer" if least > 0 else "an integer, 0 or more"
        raise ValueError(f"{key} must be {kind}{unit}; got {value!r}. Unset it for {default}.")
    return number


#: The batch span processor's variables -> (the least value it can use, the
#: specification's default, the unit). Given to the processor as checked: read
#: by itself, a value it cannot parse is its default with only a log line.
BATCHING: dict[str, tuple[int, int, str]] = {
    "OTEL_BSP_SCHEDULE_DELAY": (1, 5000, " (milliseconds)"),  # the SDK refuses 0
    # Not used by the SDK (1.45): each export is bounded by the exporter's timeout.
    "OTEL_BSP_EXPORT_TIMEOUT": (0, 30000, " (milliseconds)"),
    "OTEL_BSP_MAX_QUEUE_SIZE": (1, 2048, " (spans)"),
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": (1, 512, " (spans)"),
}


def _batching(environ: cabc.Mapping[str, str]) -> dict[str, int]:
    """The ``OTEL_BSP_*`` values, by variable: a batch fits in the queue."""
    found = {
        key: _env_int(environ, key, default, least, unit)
        for key, (least, default, unit) in BATCHING.items()
    }
    batch, queue = found["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"], found["OTEL_BSP_MAX_QUEUE_SIZE"]
    if batch > queue:
        # The SDK refuses it too, but names neither variable.
        raise ValueError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE ({batch}) must not be larger than"
            f" OTEL_BSP_MAX_QUEUE_SIZE ({queue}), the queue batches are taken from; lower"
            " the first or raise the second (unset, they are 512 and 2048)."
        )
    return found


#: The protocol -> the endpoint its exporter sends to when none is set.
ENDPOINTS = {"http/protobuf": "http://localhost:4318", "grpc": "http://localhost:4317"}
#: The protocol -> the ``OTEL_EXPORTER_OTLP_*COMPRESSION`` values its exporter
#: can use (``none``, the default, first). The gRPC exporter reads only gzip,
#: the one compression the OTLP specification names.
COMPRESSIONS = {"http/protobuf": ("none", "gzip", "deflate"), "grpc": ("none", "gzip")}
#: The exporters' timeout when none is set, in seconds.
DEFAULT_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class _Transport:
    """One signal's exporter settings, checked: what its exporter is built with."""

    protocol: str
    endpoint: str | None  # None: unset (the HTTP exporters, given none, append the path)
    timeout: float  # seconds
    compression: str


_T = t.TypeVar("_T")


def _exporter_variable(
    environ: cabc.Mapping[str, str],
    signal: str,
    setting: str,
    check: t.Callable[[str, str, str], _T],
    protocol: str,
) -> _T | None:
    """The signal's own variable, else the general one, checked; None when both are unset.

    An empty variable is an unset one (the specification's rule), as the HTTP
    exporters read them.
    """
    for key in (f"OTEL_EXPORTER_OTLP_{signal}_{setting}", f"OTEL_EXPORTER_OTLP_{setting}"):
        value = environ.get(key, "").strip()
        if value:
            return check(key, value, protocol)
    return None


def _transport(environ: cabc.Mapping[str, str], signal: str) -> _Transport:
    """What ``OTEL_EXPORTER_OTLP_*`` say for ``signal`` (TRACES or METRICS), refused when unusable.

    Left to themselves the exporters fall back to a default on a bad timeout or
    compression and drop a header they cannot parse, logging a line at most.
    """
    protocol = _exporter_variable(environ, signal, "PROTOCOL", _protocol, "") or "http/protobuf"
    # The exporters parse the headers themselves (with the same parser): only checked.
    _exporter_variable(environ, signal, "HEADERS", _headers, protocol)
    timeout_key = f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT"
    if protocol == "grpc" and timeout_key in environ and not environ[timeout_key].strip():
        # The gRPC exporters call float() on it whatever they are given.
        raise ValueError(
            f"{timeout_key} is set but empty, which the gRPC exporter cannot read; unset it,"
            " or set a number of seconds."
        )
    return _Transport(
        protocol,
        _exporter_variable(environ, signal, "ENDPOINT", _url, protocol),
        _exporter_variable(environ, signal, "TIMEOUT", _seconds, protocol) or DEFAULT_TIMEOUT,
        _exporter_variable(environ, signal, "COMPRESSION", _compression, protocol) or "none",
    )


def _protocol(key: str, value: str, _: str) -> str:
    if value not in PROTOCOLS:
        raise ValueError(
            f"{key}={value!r} is not supported; use 'http/protobuf' (the default) or 'grpc'."
        )
    return value


def _url(key: str, value: str, protocol: str) -> str:
    if protocol == "grpc":
        if value.startswith("unix:"):
            return value  # a gRPC target of its own kind, which gRPC checks
        if "://" not in value:
            # "collector:4317" (with OTEL_EXPORTER_OTLP_INSECURE): a gRPC
            # target, checked as the host and port of a URL.
            _url(key, "http://" + value, protocol)
            return value
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError on a port that is no port number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{key}={value!r} is not a URL the exporter can send to: give the scheme (http, or"
            f" https for TLS), the host and the port, e.g. {ENDPOINTS[protocol]!r}."
        )
    return value


def _seconds(key: str, value: str, _: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:  # NaN fails this too
        # 0 would not be "no limit": the HTTP exporter would give up on every
        # export at once, the gRPC one take its default instead.
        raise ValueError(
            f"{key}={value!r} must be a positive number of seconds, e.g. 10 (the Python OTLP"
            " exporters read seconds, not the specification's milliseconds); unset it for 10."
        )
    return seconds


def _compression(key: str, value: str, protocol: str) -> str:
    name = value.lower()
    if name not in COMPRESSIONS[protocol]:
        raise ValueError(
            f"{key}={value!r} is not a compression the {protocol} exporter can use; use one of"
            f" {', '.join(COMPRESSIONS[protocol])}, or unset it for none."
        )
    return name


def _headers(key: str, value: str, _: str) -> None:
    """Refuse an entry the exporters' parser would drop (they log it and send the rest)."""
    for number, entry in enumerate(value.split(","), 1):
        if entry.strip() and not parse_env_headers(entry, liberal=True):
            # Only the name: the value may be a secret, and this error may be logged.
            name, equals, _value = entry.partition("=")
            named = f" ({name.strip()!r})" if equals else ""
            raise ValueError(
                f"{key}: header {number}{named} is not a name=value pair the exporters can"
                " send, and would be dropped; give comma-separated name=value pairs, each"
                " value URL-encoded, e.g. 'api-key=abc123,authorization=Bearer%20xyz'."
            )


#: ``OTEL_TRACES_SAMPLER``'s values (the specification's names the Python SDK
#: implements) -> the sampler, or its factory taking ``OTEL_TRACES_SAMPLER_ARG``.
SAMPLERS: dict[str, Sampler | t.Callable[[float], Sampler]] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "traceidratio": TraceIdRatioBased,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
    "parentbased_traceidratio": ParentBasedTraceIdRatio,
}


def _sampler(environ: cabc.Mapping[str, str]) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` and its argument, refused when unusable.

    The SDK, given none, reads them itself but falls back to its default on
    a typo or a bad ratio with only a log line: a deployment would then
    sample what nobody asked for.
    """
    # Enum values are case-insensitive, and an empty variable is an unset one
    # (the specification's rules for environment variables).
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    found = SAMPLERS.get(name)
    if found is None:
        raise ValueError(
            f"OTEL_TRACES_SAMPLER={environ['OTEL_TRACES_SAMPLER']!r} is not a sampler; use one"
            f" of {', '.join(SAMPLERS)}, or unset it for parentbased_always_on."
        )
    if isinstance(found, Sampler):
        return found  # takes no argument: OTEL_TRACES_SAMPLER_ARG is ignored
    return found(_ratio(environ, name))


def _ratio(environ: cabc.Mapping[str, str], sampler: str) -> float:
    value = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not value:
        return 1.0  # the specification's default for the ratio samplers
    try:
        ratio = float(value)
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:  # NaN fails this too
        raise ValueError(
            f"OTEL_TRACES_SAMPLER_ARG={value!r} must be a number from 0 to 1, the ratio of"
            f" traces {sampler} samples (e.g. 0.1 for 10 %); unset it for 1.0."
        )
    return ratio


def _sdk_disabled(environ: cabc.Mapping[str, str]) -> bool:
    """``OTEL_SDK_DISABLED``: true turns the export off, as it turns the SDK off."""
    value = environ.get("OTEL_SDK_DISABLED", "").strip()
    if value.lower() not in ("", "true", "false"):
        # OpenTelemetry reads anything but "true" as false: "1" or "yes" would
        # silently leave the export on.
        raise ValueError(
            f"OTEL_SDK_DISABLED={value!r} must be 'true' (export nothing) or 'false' (the default)."
        )
    return value.lower() == "true"


def _span_exporter(transport: _Transport) -> SpanExporter:
    if transport.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc(**_grpc_options(transport))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http(**_http_options(transport))


def _metric_exporter(transport: _Transport) -> MetricExporter:
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


def _grpc_options(transport: _Transport) -> dict[str, t.Any]:
    return {
        "endpoint": transport.endpoint or ENDPOINTS["grpc"],
        "timeout": transport.timeout,
        "compression": _grpc_compression(transport.compression),
    }


def _http_options(transport: _Transport) -> dict[str, t.Any]:
    from opentelemetry.exporter.otlp.proto.http import Compression

    # No endpoint: the exporter appends /v1/traces or /v1/metrics to the general one itself.
    return {"timeout": transport.timeout, "compression": Compression(transport.compression)}


def _grpc_compression(name: str) -> t.Any:
    import grpc  # type: ignore[import-untyped]  # the exporter's dependency; no type hints

    return {"gzip": grpc.Compression.Gzip, "none": grpc.Compression.NoCompression}[name]


def _dropped(signal: str, reason: str, amount: int) -> None:
    """Count telemetry the export lost, on every app's /metrics (export is per process)."""
    if amount > 0:
        for state in list(INSTANCES):  # enabled apps only: each has metrics
            state.metrics.otlp_dropped.child((signal, reason)).inc(amount)  # type: ignore[union-attr]


# -- spans ------------------------------------------------------------------------


class _Counted(SpanExporter):
    """The exporter, counting the spans of batches that failed (they are lost)."""

    def __init__(self, exporter: SpanExporter, queue: _Queue) -> None:
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
            _dropped("traces", "export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class _Queue(SpanProcessor):
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
            _dropped("traces", "queue_full", 1)

    def left(self, amount: int) -> None:
        with self._lock:
            self._queued = max(self._queued - amount, 0)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # holds nothing (older SDKs' base class answers None)


# -- metrics ----------------------------------------------------------------------


class MetricsBridge:
    """Sends what the receivers recorded as OTLP metrics, every interval.

    Cumulative temporality from the bridge's start (in a forked worker, from
    the fork). One thread per process; a forked child starts its own, with a
    resource of its own (``service.instance.id``), so each worker's series
    are told apart and add up at the collector.
    """

    def __init__(
        self,
        exporter: MetricExporter,
        resource: t.Callable[[], Resource],
        interval: float,
        timeout: float,
    ) -> None:
        self._exporter = exporter
        self._resource = resource
        self._interval = interval
        self._timeout = timeout
        self._scope = InstrumentationScope(TRACER_NAME, VERSION)
        self._start_ns = time.time_ns()
        self._stop = threading.Event()
        self._export_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._logged: set[tuple[str, str, int]] = set()
        at_fork(self._forked)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="flask-signal-metrics-otlp", daemon=True
        )
        self._thread.start()

    def _forked(self) -> None:
        # Only the forking thread survives a fork, and locks it did not hold
        # may be left held: the child gets fresh ones and a thread of its own.
        self._start_ns = time.time_ns()
        self._export_lock = threading.Lock()
        stopped = self._stop.is_set()
        self._stop = threading.Event()
        if stopped:
            self._stop.set()
        elif self._thread is not None:
            self.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.export()

    def collect(self) -> MetricsData:
        """This process's series of every instrumented app, as OTLP data.

        Apps of one process may hold series of one name and attribute set
        (the same route in two apps): OTLP allows one point per attribute set
        in a resource, so they are added into one, as ``/metrics`` of the
        apps would be added up; but a value of the process that each app
        repeats is sent once (see ``_merged``).
        """
        now = time.time_ns()
        metrics: dict[str, tuple[str, str, str, dict[_Key, tuple[_Attributes, Reading]]]] = {}
        for reading in prometheus.readings(_registries()):
            if reading.family in _SKIPPED:
                continue
            name, unit = NAMES.get(reading.family, (reading.family, ""))
            series = metrics.setdefault(name, (reading.kind, unit, reading.documentation, {}))[3]
            attributes = _attributes(reading.labels)
            key = frozenset(attributes.items())
            earlier = series.get(key)
            if earlier is not None:
                reading = _merged(earlier[1], reading)
            series[key] = (attributes, reading)
        built = [
            Metric(
                name,
                description,
                unit,
                _data(name, kind, [self._point(r, a, now) for a, r in series.values()]),
            )
            for name, (kind, unit, description, series) in metrics.items()
        ]
        return MetricsData(
            [ResourceMetrics(self._resource(), [ScopeMetrics(self._scope, built, "")], "")]
        )

    def _point(self, reading: Reading, attributes: _Attributes, now: int) -> t.Any:
        if reading.kind == "histogram":
            return HistogramDataPoint(
                attributes,
                self._start_ns,
                now,
                reading.count,
                reading.value,
                list(reading.counts),
                list(reading.bounds),
                min=None,  # type: ignore[arg-type]  # not tracked: left out of the OTLP point
                max=None,  # type: ignore[arg-type]
                exemplars=[e for kept in reading.exemplars if (e := _exemplar(*kept)) is not None],
            )
        return NumberDataPoint(attributes, self._start_ns, now, reading.value)

    def export(self) -> bool:
        """Send the current values now; False (and counted) when that failed. Never raises.

        The bridge thread calls it every interval: an error escaping here
        would end the thread, and with it the OTLP metrics, for good.
        """
        with self._export_lock:
            try:
                data = self.collect()
            except Exception as error:
                # E.g. a collector of the user's in the app's registry raising:
                # this reading is lost (its points are unknown); the next one
                # may succeed.
                self._log_once(error, "OTLP metrics: reading the registries raised")
                _dropped("metrics", "collect_failed", 1)
                return False
            metrics = data.resource_metrics[0].scope_metrics[0].metrics  # one of each
            if not metrics:
                return True  # no instrumented app in this process (yet)
            points = sum(len(metric.data.data_points) for metric in metrics)
            try:
                result = self._exporter.export(data, timeout_millis=self._timeout * 1000)
            except Exception:
                logger.warning("OTLP metric export raised", exc_info=True)
                result = MetricExportResult.FAILURE
            if result is not MetricExportResult.SUCCESS:
                _dropped("metrics", "export_failed", points)
                return False
            return True

    def _log_once(self, error: Exception, message: str) -> None:
        """Log an error the first time its cause shows; it would recur every interval."""
        frames = traceback.extract_tb(error.__traceback__)
        where = frames[-1] if frames else None
        cause = (
            type(error).__qualname__,
            where.filename if where else "",
            (where.lineno or 0) if where else 0,
        )
        if cause not in self._logged:
            self._logged.add(cause)
            logger.warning("%s (logged once; each time counted)", message, exc_info=error)

    def shutdown(self) -> None:
        """Stop the thread, send the last values, close the exporter."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(self._timeout)
        try:
            self.export()
        finally:
            self._exporter.shutdown()


def _registries() -> list[CollectorRegistry]:
    """The registries of every enabled app in this process, each once.

    The apps of one extension share its declared signals' registry, and apps
    may be given one registry: read once per app, its series would be sent
    twice. By identity, as a registry holds its own series whatever it
    compares equal to.
    """
    found: dict[int, CollectorRegistry] = {}
    for state in list(INSTANCES):  # enabled apps only
        for registry in state.owned:
            found.setdefault(id(registry), registry)
    return list(found.values())


def _attributes(labels: dict[str, str]) -> _Attributes:
    attributes: _Attributes = {}
    for label, value in labels.items():
        if value == "":
            continue  # an empty label is an absent attribute
        key = ATTRIBUTES.get(label, label)
        attributes[key] = int(value) if key in _INTEGERS and value.isdigit() else value
    return attributes


def _merged(first: Reading, second: Reading) -> Reading:
    """Two apps' series of one name and attribute set, as the process's one."""
    if first.family in _PER_PROCESS:
        # The largest, not the first seen: an app made after some losses
        # counted only the later ones, the oldest app every one (all count
        # from 0; the info gauge is 1 in each).
        return max(first, second, key=operator.attrgetter("value"))
    return _added(first, second)


def _added(first: Reading, second: Reading) -> Reading:
    """Two apps' series of one name and attribute set, as one series: their sum.

    Gauges add too: the requests in flight in the process are each app's.
    """
    if first.kind != "histogram":
        return dataclasses.replace(first, value=first.value + second.value)
    bounds = first.bounds
    if second.bounds != bounds:
        # Apps configured with other buckets: the bounds both have still
        # split both exactly (each of their buckets is a run of finer ones).
        shared = set(second.bounds)
        bounds = tuple(bound for bound in first.bounds if bound in shared)
    return dataclasses.replace(
        first,
        value=first.value + second.value,
        count=first.count + second.count,
        bounds=bounds,
        counts=tuple(map(operator.add, _rebucketed(first, bounds), _rebucketed(second, bounds))),
        exemplars=_latest(first.exemplars + second.exemplars, bounds),
    )


def _rebucketed(reading: Reading, bounds: tuple[float, ...]) -> list[int]:
    """The reading's bucket counts on ``bounds``, some of its own bounds."""
    if reading.bounds == bounds:
        return list(reading.counts)
    counts, run = [], 0
    # Without the last count, +Inf's: added to the last bucket below.
    for bound, count in zip(reading.bounds, reading.counts[:-1], strict=True):
        run += count
        if bound in bounds:
            counts.append(run)
            run = 0
    counts.append(run + reading.counts[-1])
    return counts


def _latest(
    exemplars: tuple[tuple[str, str, float, float], ...], bounds: tuple[float, ...]
) -> tuple[tuple[str, str, float, float], ...]:
    """The latest exemplar of each bucket, as /metrics keeps one per bucket."""
    kept: dict[int, tuple[str, str, float, float]] = {}
    for exemplar in exemplars:
        bucket = bisect.bisect_left(bounds, exemplar[2])  # buckets include their upper bound
        if bucket not in kept or exemplar[3] > kept[bucket][3]:
            kept[bucket] = exemplar
    return tuple(kept[bucket] for bucket in sorted(kept))


def _exemplar(trace_id: str, span_id: str, value: float, when: float) -> Exemplar | None:
    """A /metrics exemplar as an OTLP one: the same trace, the same request.

    None when its ids are not W3C ids: the exemplars of a user's own
    histogram may carry any label called ``trace_id`` (``"req-42"``), and an
    id that does not fit OTLP's 16 and 8 bytes would fail the whole export.
    """
    if not (_is_hex(trace_id, 32) and (not span_id or _is_hex(span_id, 16))):
        return None
    return Exemplar({}, value, int(when * 1e9), int(span_id or "0", 16), int(trace_id, 16))


def _is_hex(value: str, digits: int) -> bool:
    return len(value) == digits and all(c in "0123456789abcdefABCDEF" for c in value)


def _data(name: str, kind: str, points: list[t.Any]) -> t.Any:
    cumulative = AggregationTemporality.CUMULATIVE
    if kind == "histogram":
        return Histogram(points, cumulative)
    if kind == "counter":
        return Sum(points, cumulative, True)
    if name in _UP_DOWN:
        return Sum(points, cumulative, False)
    return Gauge(points)


# -- the helper ---------------------------------------------------------------------


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
    if _sdk_disabled(env):
        return OTLPExport(None, None)
    span_transport = _transport(env, "TRACES") if traces else None
    metric_transport = _transport(env, "METRICS") if metrics else None
    interval = _env_int(env, "OTEL_METRIC_EXPORT_INTERVAL", 60000, unit=" (milliseconds)") / 1000
    timeout = _env_int(env, "OTEL_METRIC_EXPORT_TIMEOUT", 30000, unit=" (milliseconds)") / 1000
    batching = _batching(env) if traces else {}
    sampler = _sampler(env) if traces else None
    if traces and not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        raise RuntimeError(
            "A global TracerProvider is already set, and OpenTelemetry allows only"
            " one; call configure_otlp(traces=False) and add an OTLP exporter to"
            " your provider yourself, or drop your own set-up."
        )
    # The exporters read (and may refuse) the variables left to them when built.
    span_exporter = _span_exporter(span_transport) if span_transport is not None else None
    metric_exporter = _metric_exporter(metric_transport) if metric_transport is not None else None
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
    queue = _Queue(capacity)
    # Shut down by the handle (at exit too), after the last metrics.
    provider = TracerProvider(sampler, shutdown_on_exit=False)
    provider.add_span_processor(queue)
    provider.add_span_processor(
        BatchSpanProcessor(
            _Counted(exporter, queue),
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
