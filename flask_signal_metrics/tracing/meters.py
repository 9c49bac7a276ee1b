"""The HTTP server metrics, recorded through an OpenTelemetry meter provider.

For ``meter_provider=``: besides the Prometheus metrics, the receivers record
each request here through the OTel metrics API, so that the SDK's views,
resource attributes and exemplars apply. Names, units and attributes are the
stable HTTP semantic conventions', as opentelemetry-instrumentation-flask
records them in its ``http`` mode.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

from opentelemetry import trace
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
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span

_METHOD = http_attributes.HTTP_REQUEST_METHOD
_SCHEME = url_attributes.URL_SCHEME
_ROUTE = http_attributes.HTTP_ROUTE
_STATUS = http_attributes.HTTP_RESPONSE_STATUS_CODE
_ERROR = error_attributes.ERROR_TYPE
_PROTOCOL = network_attributes.NETWORK_PROTOCOL_VERSION


class ServerMeters:
    """One app's HTTP server instruments, from its meter provider."""

    def __init__(
        self,
        provider: MeterProvider,
        version: str,
        buckets: cabc.Sequence[float],
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
        self._active = meter.create_up_down_counter(
            _compat.HTTP_SERVER_ACTIVE_REQUESTS,
            unit="{request}",
            description="Number of active HTTP server requests.",
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

    def started(self, method: str, scheme: str) -> None:
        """A request counted in flight."""
        self._active.add(1, {_METHOD: method, _SCHEME: scheme})

    def unstarted(self, method: str, scheme: str) -> None:
        """Undo :meth:`started`: the request's start failed after it."""
        self._active.add(-1, {_METHOD: method, _SCHEME: scheme})

    def finished(self, request: Finished, span: Span | None) -> None:
        """A request done: its duration and sizes, in flight no more if it was counted.

        :param span: the request's sampled span, for the exemplars.
        """
        if request.counted:
            self._active.add(-1, {_METHOD: request.method, _SCHEME: request.scheme})
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
    #: Counted in flight at its start (not a late start).
    counted: bool


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
