"""The metrics bridge: what the receivers recorded for ``/metrics``, sent as OTLP metrics.

Every export interval a thread reads this process's registries and sends
their series under the semantic conventions' names; the request pays nothing
for it, and OTLP and ``/metrics`` agree by construction.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import operator
import threading
import time
import traceback
import typing as t

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
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.semconv.attributes import http_attributes
from opentelemetry.semconv.attributes import url_attributes
from opentelemetry.semconv.metrics import http_metrics

from ..forks import at_fork
from ..metrics.names import CLASSIC_COUNT
from ..metrics.names import CLASSIC_DURATION
from ..metrics.names import DURATION
from ..metrics.names import RECEIVER_ERRORS
from ..metrics.names import REQUEST_SIZE
from ..metrics.names import RESPONSE_SIZE
from ..metrics.names import SERIES_OVERFLOW
from ..metrics.readback import Reading
from ..metrics.readback import readings
from ..state import INSTANCES
from ..tracing._compat import HTTP_SERVER_ACTIVE_REQUESTS
from ..tracing._compat import HTTP_SERVER_REQUEST_BODY_SIZE
from ..tracing._compat import HTTP_SERVER_RESPONSE_BODY_SIZE
from ..tracing.spans import TRACER_NAME
from ..version import VERSION
from .exporters import count_dropped

if t.TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import CollectorRegistry

logger = logging.getLogger("flask_signal_metrics")


#: Prometheus family -> (OTel metric name, UCUM unit). Classic naming's
#: duration maps to the same instrument; its request counter repeats the
#: histogram's count and is not sent.
NAMES: dict[str, tuple[str, str]] = {
    DURATION: (http_metrics.HTTP_SERVER_REQUEST_DURATION, "s"),
    CLASSIC_DURATION: (http_metrics.HTTP_SERVER_REQUEST_DURATION, "s"),
    "http_server_active_requests": (HTTP_SERVER_ACTIVE_REQUESTS, "{request}"),
    REQUEST_SIZE: (HTTP_SERVER_REQUEST_BODY_SIZE, "By"),
    RESPONSE_SIZE: (HTTP_SERVER_RESPONSE_BODY_SIZE, "By"),
    "flask_request_exceptions": ("flask.request.exceptions", "{exception}"),
    "flask_template_render_duration_seconds": ("flask.template.render.duration", "s"),
    "flask_flashed_messages": ("flask.flashed_messages", "{message}"),
    "flask_response_ready_duration_seconds": ("flask.response.ready.duration", "s"),
    SERIES_OVERFLOW: ("flask_signal_metrics.series_overflow", "1"),
    RECEIVER_ERRORS: ("flask_signal_metrics.receiver_errors", "{error}"),
    "flask_signal_metrics_otlp_dropped": ("flask_signal_metrics.otlp.dropped", "1"),
}
_SKIPPED = frozenset((CLASSIC_COUNT,))
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
_UP_DOWN = frozenset((HTTP_SERVER_ACTIVE_REQUESTS,))


_Attributes = dict[str, "str | int"]
#: A point's attribute set, hashable: what tells a metric's points apart.
_Key = frozenset[tuple[str, "str | int"]]


class _Point(t.NamedTuple):
    """One series of a metric: its attributes and its reading (of the apps, added)."""

    attributes: _Attributes
    reading: Reading


class _Series(t.NamedTuple):
    """A metric being built: its kind, unit and description, its points by attribute set."""

    kind: str
    unit: str
    description: str
    points: dict[_Key, _Point]


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
        metrics: dict[str, _Series] = {}
        names, skipped = _names()
        for reading in readings(_registries()):
            if reading.family in skipped:
                continue
            name, unit = names.get(reading.family, (reading.family, ""))
            series = metrics.setdefault(
                name, _Series(reading.kind, unit, reading.documentation, {})
            ).points
            attributes = _attributes(reading.labels)
            key = frozenset(attributes.items())
            earlier = series.get(key)
            if earlier is not None:
                reading = _merged(earlier.reading, reading)
            series[key] = _Point(attributes, reading)
        built = [
            Metric(
                name,
                description,
                unit,
                _data(name, kind, [self._point(r, a, now) for a, r in points.values()]),
            )
            for name, (kind, unit, description, points) in metrics.items()
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
                count_dropped("metrics", "collect_failed", 1)
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
                count_dropped("metrics", "export_failed", points)
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


def _names() -> tuple[dict[str, tuple[str, str]], frozenset[str]]:
    """:data:`NAMES` and :data:`_SKIPPED`, with each classic app's own names (its prefix)."""
    names, skipped = dict(NAMES), set(_SKIPPED)
    for state in list(INSTANCES):
        if state.metrics is not None and state.settings.naming == "classic":
            classic = state.metrics.requests.names
            names[classic.duration] = NAMES[CLASSIC_DURATION]
            skipped.add(classic.requests)
    return names, frozenset(skipped)


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
    times: dict[int, float] = {}
    for exemplar in exemplars:
        _trace_id, _span_id, value, when = exemplar
        bucket = bisect.bisect_left(bounds, value)  # buckets include their upper bound
        if bucket not in kept or when > times[bucket]:
            kept[bucket], times[bucket] = exemplar, when
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
