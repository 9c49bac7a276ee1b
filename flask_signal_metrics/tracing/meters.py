"""The HTTP server metrics, recorded through an OpenTelemetry meter provider.

For ``meter_provider=``: besides the Prometheus metrics, the receivers record
each request here through the OTel metrics API, so that the SDK's views,
resource attributes and exemplars apply. Names, units and attributes are the
stable HTTP semantic conventions', as opentelemetry-instrumentation-flask
records them in its ``http`` mode.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import threading
import typing as t
import weakref

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions
from opentelemetry.metrics import Observation
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.semconv.attributes import http_attributes
from opentelemetry.semconv.attributes import network_attributes
from opentelemetry.semconv.attributes import url_attributes
from opentelemetry.semconv.metrics.http_metrics import HTTP_SERVER_REQUEST_DURATION

from . import _compat
from .attributes import old_request_attributes
from .attributes import protocol_version
from .attributes import split_host
from .spans import SCHEMA_URL
from .spans import TRACER_NAME

if t.TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span

_METHOD = http_attributes.HTTP_REQUEST_METHOD
_SCHEME = url_attributes.URL_SCHEME
_ROUTE = http_attributes.HTTP_ROUTE
_STATUS = http_attributes.HTTP_RESPONSE_STATUS_CODE
_ERROR = error_attributes.ERROR_TYPE
_PROTOCOL = network_attributes.NETWORK_PROTOCOL_VERSION


class ActiveCount(t.Protocol):
    """One (method, scheme)'s requests in flight, as the metrics side counts them.

    The metrics side's ``Active`` records are this shape; a protocol keeps
    the tracing side from importing the metrics side.
    """

    @property
    def method(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def requests(self) -> int: ...
    @property
    def counter(self) -> t.Hashable:
        """What the count is read from: two apps reading one count report it once."""


class ServerMeters:
    """One app's HTTP server instruments, from its meter provider.

    ``http.server.active_requests`` is observed at collection from the
    app's in-flight counts (those of the Prometheus gauge), not added to at
    both ends of every request: the same values, without two SDK
    measurements a request.
    """

    def __init__(
        self,
        provider: MeterProvider,
        version: str,
        buckets: cabc.Sequence[float],
        in_flight: cabc.Callable[[], cabc.Iterable[ActiveCount]],
        old_names: bool = False,
    ) -> None:
        meter = provider.get_meter(TRACER_NAME, version, schema_url=SCHEMA_URL)
        #: OTEL_SEMCONV_STABILITY_OPT_IN=http/dup: the old duration (in ms) as well.
        self._old_duration = (
            meter.create_histogram(
                OLD_DURATION,
                unit="ms",
                description="Measures the duration of inbound HTTP requests.",
            )
            if old_names
            else None
        )
        self._duration = meter.create_histogram(
            HTTP_SERVER_REQUEST_DURATION,
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(buckets),
        )
        self._request_size = meter.create_histogram(
            _compat.HTTP_SERVER_REQUEST_BODY_SIZE,
            unit="By",
            description="Size of HTTP server request bodies.",
        )
        self._response_size = meter.create_histogram(
            _compat.HTTP_SERVER_RESPONSE_BODY_SIZE,
            unit="By",
            description="Size of HTTP server response bodies.",
        )
        self.in_flight = in_flight
        #: Whether its requests in flight are observed: not while another
        #: instrumentation's OTel metrics are the app's (set by the receivers).
        self.counting = True
        self._active = active_requests(provider, meter)
        self._active.add(self)

    def close(self) -> None:
        """Observe its requests in flight no more (the app's set-up is removed)."""
        self._active.discard(self)

    def finished(self, request: Finished, span: Span | None) -> None:
        """A request done: its duration and sizes.

        :param span: the request's sampled span, for the exemplars.
        """
        attributes: dict[str, str | int] = {
            _METHOD: request.method,
            _SCHEME: request.scheme,
            _STATUS: request.status,
        }
        if request.route:
            attributes[_ROUTE] = request.route
        if request.error:
            attributes[_ERROR] = request.error
        protocol = protocol_version(request.environ)
        if protocol:
            attributes[_PROTOCOL] = protocol
        context = None if span is None else trace.set_span_in_context(span)
        self._duration.record(request.duration, attributes, context=context)
        if self._old_duration is not None:
            old = old_duration_attributes(request.environ, request.route, request.status)
            self._old_duration.record(max(round(request.duration * 1000), 0), old, context=context)
        if request.request_size is not None:
            self._request_size.record(request.request_size, attributes, context=context)
        if request.response_size is not None:
            self._response_size.record(request.response_size, attributes, context=context)


class ActiveRequests:
    """``http.server.active_requests`` of the apps recording to one meter provider.

    The SDK keeps the callbacks of the first instrument of a name only, so a
    second app's would be lost: there is one observable instrument per
    provider, and whichever of them the SDK calls reports every app whose
    provider resolves to its own. The API's stand-in provider is resolved at
    each collection: an app set up on it before an SDK provider is set and
    one set up on that provider share a meter then. Each in-flight count is reported once,
    however many apps read it (multiprocess apps of one worker share theirs),
    and the counts of one method and scheme are summed, as the adds of two
    apps to one up-down counter are.
    """

    def __init__(self, provider: object, meter: Meter) -> None:
        # Weakly: its entry in _SHARED would keep the provider alive otherwise.
        try:
            self._provider: t.Callable[[], object] = weakref.ref(provider)
        except TypeError:
            self._provider = lambda: provider  # pinned, as its entry is
        self._lock = threading.Lock()
        #: Copied on write, read without the lock by the collecting thread.
        self.sources: tuple[weakref.ref[ServerMeters], ...] = ()
        meter.create_observable_up_down_counter(
            _compat.HTTP_SERVER_ACTIVE_REQUESTS,
            callbacks=[self.observe],
            unit="{request}",
            description="Number of active HTTP server requests.",
        )

    def add(self, source: ServerMeters) -> None:
        with self._lock:
            self.sources = (*self._live(), weakref.ref(source))

    def discard(self, source: ServerMeters) -> None:
        with self._lock:
            self.sources = tuple(r for r in self._live() if r() is not source)

    def _live(self) -> tuple[weakref.ref[ServerMeters], ...]:
        return tuple(r for r in self.sources if r() is not None)

    def counting(self) -> list[ServerMeters]:
        """Its apps' meters that observe their requests in flight now."""
        found = [reference() for reference in self.sources]
        return [source for source in found if source is not None and source.counting]

    def observe(self, options: CallbackOptions) -> list[Observation]:
        """The SDK's callback, at each collection: the counting apps' in-flight counts."""
        resolved = self.resolved()
        if resolved is None:
            return []
        totals: dict[tuple[str, str], int] = {}
        counted: set[t.Hashable] = set()
        for active in _in_flight_of(resolved):
            if active.counter not in counted:
                counted.add(active.counter)
                key = (active.method, active.scheme)
                totals[key] = totals.get(key, 0) + active.requests
        return [
            Observation(count, {_METHOD: method, _SCHEME: scheme})
            for (method, scheme), count in totals.items()
        ]

    def resolved(self) -> object:
        """The provider its instrument records to now (None once the provider is gone)."""
        provider = self._provider()
        return None if provider is None else _compat.resolved_meter_provider(provider)

    def _forked(self) -> None:
        self._lock = threading.Lock()


_SHARED: weakref.WeakKeyDictionary[object, ActiveRequests] = weakref.WeakKeyDictionary()
#: For a provider without weak references: kept for the process's life.
_PINNED: dict[int, ActiveRequests] = {}
_SHARED_LOCK = threading.Lock()


def active_requests(provider: MeterProvider, meter: Meter) -> ActiveRequests:
    """The provider's :class:`ActiveRequests`, made on ``meter`` at its first app."""
    with _SHARED_LOCK:
        try:
            found = _SHARED.get(provider)
        except TypeError:
            found = _PINNED.get(id(provider))
            if found is None:
                found = _PINNED[id(provider)] = ActiveRequests(provider, meter)
            return found
        if found is None:
            found = _SHARED[provider] = ActiveRequests(provider, meter)
        return found


def _all_shared() -> list[ActiveRequests]:
    with _SHARED_LOCK:
        return [*_SHARED.values(), *_PINNED.values()]


def _in_flight_of(resolved: object) -> cabc.Iterator[ActiveCount]:
    """The in-flight counts of every counting app whose provider records to ``resolved``."""
    for shared in _all_shared():
        if shared.resolved() is resolved:
            for source in shared.counting():
                yield from source.in_flight()


def _forked() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()
    for shared in [*_SHARED.values(), *_PINNED.values()]:
        shared._forked()


os.register_at_fork(after_in_child=_forked)


class Finished(t.NamedTuple):
    """What a finished request's measurements are, for :meth:`ServerMeters.finished`."""

    method: str
    scheme: str
    route: str
    status: int
    error: str
    #: The request's WSGI environ (the protocol version, and the old names' values).
    environ: cabc.Mapping[str, t.Any]
    duration: float
    request_size: int | None
    response_size: int | None


#: The old experimental duration metric's name (milliseconds).
OLD_DURATION = "http.server.duration"

#: The old names the duration kept, as opentelemetry-instrumentation-wsgi filters them.
_OLD_DURATION_KEYS = (
    "http.method",
    "http.host",
    "http.scheme",
    "http.flavor",
    "http.server_name",
    "net.host.name",
    "net.host.port",
)


def old_duration_attributes(
    environ: cabc.Mapping[str, t.Any], route: str, status: int
) -> dict[str, t.Any]:
    """The old duration's attributes: old request names, status, the route as ``http.target``."""
    host, _ = split_host(environ.get("HTTP_HOST", ""), environ.get("wsgi.url_scheme", "http"))
    every = old_request_attributes(environ, host)
    found = {key: every[key] for key in _OLD_DURATION_KEYS if key in every}
    found["http.status_code"] = status
    if route:
        found["http.target"] = route
    return found
