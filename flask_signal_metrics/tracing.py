"""OpenTelemetry spans of requests, renders and flashes: the only module using the OTel API.

One :class:`Tracing` per app. The receivers call it; it never connects to a
signal and never touches the app. It uses the tracer provider the user
configured (passed to the extension, or the global one), and never sets one:
that is left to the user or to the opt-in
:func:`flask_signal_metrics.configure_otlp`.

With no SDK configured the global provider is the API's proxy: then no span is
made, no header is read and no context is attached. While none is found, the
global provider is looked up again once a second (:attr:`Tracing.idle_until`),
so that one set after ``init_app`` is used, from a second later at most; a
forked worker looks it up at its first request.

Names, attributes and status follow the stable HTTP semantic conventions for
server spans; the attribute names are the semantic-conventions package's.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import logging
import math
import os
import re
import threading
import time
import typing as t
from urllib.parse import unquote_plus

from opentelemetry import context
from opentelemetry import propagate
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.semconv.attributes import client_attributes
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.semconv.attributes import http_attributes
from opentelemetry.semconv.attributes import network_attributes
from opentelemetry.semconv.attributes import server_attributes
from opentelemetry.semconv.attributes import url_attributes
from opentelemetry.semconv.attributes import user_agent_attributes
from opentelemetry.trace import SpanKind
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode
from opentelemetry.trace import TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import labels
from .forks import at_fork

if t.TYPE_CHECKING:
    from contextvars import Token

    from flask import Flask
    from flask import Request
    from flask import Response
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span
    from opentelemetry.trace import Tracer
    from opentelemetry.trace import TracerProvider

    from .config import Matcher

logger = logging.getLogger("flask_signal_metrics")

_time_ns = time.time_ns
_perf_counter = time.perf_counter

#: Seconds between lookups of the global tracer provider while none is set.
_RECHECK = 1.0

#: The instrumentation scope of every span made here.
TRACER_NAME = "flask_signal_metrics"

#: Query keys whose values become ``REDACTED``: the four the conventions and
#: opentelemetry-util-http name, and AWS Signature Version 4's counterparts.
SENSITIVE_QUERY_KEYS = frozenset(
    (
        "AWSAccessKeyId",
        "Signature",
        "sig",
        "X-Goog-Signature",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
    )
)

#: What a sanitized captured header's value becomes (as in the contrib instrumentations).
REDACTED_HEADER = "[REDACTED]"

#: A span event per flashed message carries only this attribute: the category.
FLASH_EVENT = "flask.message_flashed"
FLASH_CATEGORY = "flask.flash.category"
TEMPLATE_NAME = "flask.template.name"

#: The ``start`` slot of a request whose server span another library makes
#: (opentelemetry-instrumentation-flask): templates and flashes still nest
#: under it, and exemplars link to it.
EXTERNAL = "external"

_DEFAULT_PORTS = {"http": 80, "https": 443}

_HTTP_ROUTE = http_attributes.HTTP_ROUTE
_STATUS_CODE = http_attributes.HTTP_RESPONSE_STATUS_CODE
_ERROR_TYPE = error_attributes.ERROR_TYPE

#: (span, context token, the thread that made it current) of a render span.
Handle = tuple["Span", "object | None", int]


class EnvironGetter(Getter[dict[str, t.Any]]):
    """Reads propagation headers straight from the WSGI environ.

    Measured on the CI machine: extraction with the API's default getter over
    ``request.headers`` (a case-folding lookup and an ``isinstance`` against
    a typing ABC per field) costs 13.9 µs a request, with this one 11.3 µs;
    the rest is the propagators' own parsing. The environ is what
    ``request.headers`` reads, so the values are the same.
    """

    _keys: t.ClassVar[dict[str, str]] = {}

    def get(self, carrier: dict[str, t.Any], key: str) -> list[str] | None:
        name = self._keys.get(key)
        if name is None:
            name = self._keys.setdefault(key, "HTTP_" + key.upper().replace("-", "_"))
        value = carrier.get(name)
        return None if value is None else [value]

    def keys(self, carrier: dict[str, t.Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


_GETTER = EnvironGetter()

#: The API's own pattern for a ``traceparent`` value (None if it moved).
_TRACEPARENT: re.Pattern[str] | None = getattr(
    TraceContextTextMapPropagator, "_TRACEPARENT_HEADER_FORMAT_RE", None
)
_ZERO_TRACE_ID, _ZERO_SPAN_ID = "0" * 32, "0" * 16
_FLAGS = tuple(TraceFlags(n) for n in range(256))
_ROOT = Context()


def _is_default_textmap(textmap: TextMapPropagator) -> bool:
    """Whether ``textmap`` is the API's default: W3C trace context, then W3C baggage."""
    kinds = [type(p) for p in getattr(textmap, "_propagators", ())]
    return (
        _TRACEPARENT is not None
        and type(textmap) is CompositePropagator
        and kinds == [TraceContextTextMapPropagator, W3CBaggagePropagator]
    )


#: The global propagator last seen, and whether it is the API's default (one
#: tuple, so that a thread never reads one's propagator with the other's answer).
_textmap_seen: tuple[t.Any, bool] = (None, False)


def extract_parent(environ: dict[str, t.Any]) -> Context:
    """The parent context of a request, by the globally configured propagator.

    When that propagator is the API's default (``OTEL_PROPAGATORS`` unset or
    ``tracecontext,baggage``) and the request has no ``tracestate`` or
    ``baggage`` header, its ``traceparent`` is parsed here, with the API's own
    pattern and rules, into the context the propagator would give. Measured
    (valgrind, the request's receivers looped): the propagator costs 44 400
    instructions a request, this 23 700, where a whole unsampled span costs
    77 000 and the request's metrics 66 000. Any other propagator, and any
    request with the other two headers, goes to the propagator itself.
    tests/test_tracing.py compares the two on each rule of the header.
    """
    global _textmap_seen
    textmap = propagate.get_global_textmap()
    seen = _textmap_seen
    if textmap is not seen[0]:  # the first request, or set_global_textmap since
        seen = _textmap_seen = (textmap, _is_default_textmap(textmap))
    if not seen[1] or "HTTP_TRACESTATE" in environ or "HTTP_BAGGAGE" in environ:
        return textmap.extract(environ, getter=_GETTER)
    header = environ.get("HTTP_TRACEPARENT")
    if not header:
        return _ROOT
    match = _TRACEPARENT.search(header)  # type: ignore[union-attr]  # seen[1] says set
    if match is None:
        return _ROOT
    version, trace_id, span_id, flags, rest = match.groups()
    if (
        trace_id == _ZERO_TRACE_ID
        or span_id == _ZERO_SPAN_ID
        or version == "ff"
        or (version == "00" and rest)
    ):
        return _ROOT
    remote = trace.SpanContext(int(trace_id, 16), int(span_id, 16), True, _FLAGS[int(flags, 16)])
    return trace.set_span_in_context(trace.NonRecordingSpan(remote), _ROOT)


@dataclasses.dataclass(frozen=True)
class Capture:
    """Which headers become span attributes, from the standard variables.

    Each entry of the request and response lists is a case-insensitive
    regular expression matched against the whole header name; the value of
    a captured header whose name contains a match of a ``sanitize`` entry
    (case-insensitive, anywhere in the name: ``session`` redacts
    ``X-Session-Id``) becomes :data:`REDACTED_HEADER`. Both as
    opentelemetry-util-http's ``SanitizeValue`` does (tests/test_tracing.py
    compares them).
    """

    request: Matcher | None = None
    response: Matcher | None = None
    sanitize: Matcher | None = None

    def headers(
        self, prefix: str, pattern: Matcher, headers: cabc.Iterable[tuple[str, str]]
    ) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for name, value in headers:
            if pattern.fullmatch(name):
                if self.sanitize is not None and self.sanitize.search(name):
                    value = REDACTED_HEADER
                found.setdefault(prefix + name.lower(), []).append(value)
        return found


class Tracing:
    """The spans of one app's requests, templates and flashed messages."""

    def __init__(
        self,
        provider: TracerProvider | None,
        version: str,
        capture: Capture,
    ) -> None:
        self._fixed = provider
        self._version = version
        self._capture = capture
        self._seen: object = None
        self._tracer: Tracer | None = None
        self._warned_external = False
        #: Until then (``time.perf_counter``) no tracer will be found: the
        #: receivers skip this object. Looking the provider up on every
        #: request cost 1 500 instructions of the 25 000 the extension added
        #: to one (bench/bench_instructions.py).
        self.idle_until = -math.inf
        at_fork(self._forked)

    def _forked(self) -> None:
        # A worker configures its own provider (gunicorn's post_fork, say).
        self.idle_until = -math.inf

    def tracer(self) -> Tracer | None:
        """The tracer to use now, or None when no SDK is configured."""
        provider = self._fixed
        if provider is None:
            # Inline (called per request): see _global_provider.
            provider = trace._TRACER_PROVIDER if _READ_GLOBAL else _global_provider()
            if provider is None:
                provider = _PROXY
        if provider is not self._seen:
            # A new global provider (set after init_app): resolve once more.
            tracer: Tracer | None = None
            if not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
                tracer = provider.get_tracer(TRACER_NAME, self._version)
                if isinstance(tracer, trace.NoOpTracer):  # OTEL_SDK_DISABLED
                    tracer = None
            self._tracer = tracer
            self._seen = provider
        return self._tracer

    # -- server spans ---------------------------------------------------------

    def start(
        self, app: Flask, request: Request, method: str, route: str
    ) -> tuple[Span | None, object, int] | str | None:
        """Start the request's SERVER span and make it current.

        :param method: the normalised method (``_OTHER`` for unknown ones).
        :param route: the route template with the app root, ``""`` if none matched.
        :returns: the span, its context token and its start (ns), with None
            for the span when it records nothing (not sampled); or
            :data:`EXTERNAL` when opentelemetry-instrumentation-flask makes
            the app's server spans, or None when there is no tracer.
        """
        tracer = self.tracer()
        if tracer is None:
            self.idle_until = _perf_counter() + (_RECHECK if self._fixed is None else math.inf)
            return None
        if getattr(app, "_is_instrumented_by_opentelemetry", False):
            if not self._warned_external:
                self._warned_external = True
                logger.warning(
                    "flask-signal-metrics: opentelemetry-instrumentation-flask already"
                    " makes this app's server spans; flask-signal-metrics makes none (no"
                    " duplicates), nests its template spans and flash events under that"
                    " span and links its exemplars to it."
                )
            return EXTERNAL
        # The span ends at start + the measured duration: span and histogram
        # agree, as the conventions ask.
        start_ns = _time_ns()
        kind = SpanKind.SERVER
        parent: Context | None
        current = context.get_current()
        # An empty current context (the usual case) holds no span: skip the lookup.
        if current and trace.get_current_span(current).get_span_context().is_valid:
            # A WSGI middleware around the app (opentelemetry-instrumentation-
            # wsgi, say) already made the server span: nest under it as
            # INTERNAL, as the contrib instrumentations do, not a second SERVER.
            parent, kind = None, SpanKind.INTERNAL
        else:
            parent = extract_parent(request.environ)
        span = tracer.start_span(
            _span_name(method, route),
            parent,
            kind,
            _StartAttributes(self, request, method, route),
            start_time=start_ns,
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        if not span.is_recording():
            # Not sampled: its context must be current (what the view's spans
            # and outgoing calls inherit), but nothing is ended, set or linked.
            return None, token, 0
        return span, token, start_ns

    def attributes(self, request: Request, method: str, route: str) -> dict[str, t.Any]:
        """The attributes known at the start, read from the request's environ.

        A ``ProxyFix`` the user applied rewrote the environ (scheme, host,
        client address, script root) before Flask saw it, so it counts; the
        environ is read directly because the ``request`` properties cost
        4 µs more per request on the CI machine.
        """
        environ = request.environ
        scheme = environ.get("wsgi.url_scheme", "http")
        attributes: dict[str, t.Any] = {
            http_attributes.HTTP_REQUEST_METHOD: method,
            url_attributes.URL_PATH: request.root_path + request.path,
            url_attributes.URL_SCHEME: scheme,
        }
        # "_OTHER" for an unknown method, and Werkzeug upper-cases a known
        # one sent in another case: either way the conventions want the original.
        original = environ.get("REQUEST_METHOD", method)
        if original != method:
            attributes[http_attributes.HTTP_REQUEST_METHOD_ORIGINAL] = original
        if route:
            attributes[_HTTP_ROUTE] = route
        query = environ.get("QUERY_STRING")
        if query:
            attributes[url_attributes.URL_QUERY] = redact_query(query)
        host, port = split_host(_host(environ), scheme)
        if host:
            attributes[server_attributes.SERVER_ADDRESS] = host
            if port is not None:
                attributes[server_attributes.SERVER_PORT] = port
        client = environ.get("REMOTE_ADDR")
        if client:
            attributes[client_attributes.CLIENT_ADDRESS] = client
        protocol = environ.get("SERVER_PROTOCOL", "")
        if protocol.startswith("HTTP/"):
            attributes[network_attributes.NETWORK_PROTOCOL_VERSION] = protocol[5:]
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            attributes[user_agent_attributes.USER_AGENT_ORIGINAL] = agent
        capture = self._capture
        if capture.request is not None:
            attributes.update(
                capture.headers("http.request.header.", capture.request, request.headers.items())
            )
        return attributes

    def finish(
        self,
        span: Span,
        status: int,
        error: str,
        exception: BaseException | None,
        response: Response | None,
        end_ns: int,
    ) -> None:
        """End a recording server span: status code, error, captured response headers."""
        if not span.is_recording():
            return  # the view ended it already: adding to it would only warn
        span.set_attribute(_STATUS_CODE, status)
        if error:
            span.set_attribute(_ERROR_TYPE, error)
            # 5xx and escaped exceptions are errors; a 4xx is the client's and stays unset.
            description = None if exception is None else f"{error}: {exception}"
            span.set_status(Status(StatusCode.ERROR, description))
        if exception is not None:
            span.record_exception(exception)
        capture = self._capture
        if capture.response is not None and response is not None:
            span.set_attributes(
                capture.headers("http.response.header.", capture.response, response.headers.items())
            )
        span.end(end_ns)

    @staticmethod
    def detach(token: object) -> None:
        """Make the request's parent context current again (at its teardown)."""
        context.detach(t.cast("Token[Context]", token))

    # -- templates and flashes ------------------------------------------------

    @staticmethod
    def render_started(tracer: Tracer, name: str) -> Handle:
        """A child span for a template render, made current while it renders."""
        span = tracer.start_span(f"render {name}", attributes={TEMPLATE_NAME: name})
        return span, context.attach(trace.set_span_in_context(span)), threading.get_ident()

    @staticmethod
    def render_ended(handle: Handle, failed: bool = False) -> None:
        span = handle[0]
        try:
            if failed:
                # template_rendered never came: the render raised.
                span.set_status(Status(StatusCode.ERROR))
            span.end()  # a span processor of the user's may raise here
        finally:
            _detach_render(handle)

    @staticmethod
    def release(handle: Handle) -> Handle:
        """A render span no longer current, still open (a streamed template's)."""
        _detach_render(handle)
        return handle[0], None, handle[2]

    def flashed(self, category: str) -> None:
        """An event on the current span: the category only, never the message."""
        if self.tracer() is not None:
            trace.get_current_span().add_event(FLASH_EVENT, {FLASH_CATEGORY: category})

    # -- exemplars --------------------------------------------------------------

    @staticmethod
    def sampled_ids(span: Span) -> tuple[int, int] | None:
        """(trace id, span id) of a sampled span."""
        span_context = span.get_span_context()
        if span_context.trace_flags.sampled and span_context.is_valid:
            return span_context.trace_id, span_context.span_id
        return None


class _StartAttributes(cabc.Mapping[str, t.Any]):
    """A server span's start attributes, read from the request when first asked for.

    They are passed to ``start_span`` so that a sampler can decide on them, as
    the conventions ask; the SDK's own samplers (always on or off, trace-id
    ratio, parent based) read them only to keep them on a span they sample.
    For a span they drop, nobody reads them, and making them was 13 000 of
    the 114 000 instructions an unsampled span cost (valgrind, bench/
    bench_instructions.py --bench tracing). A sampler of the user's that
    reads them gets the same values, made at its first look.
    """

    __slots__ = ("_made", "_method", "_request", "_route", "_tracing")

    def __init__(self, tracing: Tracing, request: Request, method: str, route: str) -> None:
        self._tracing = tracing
        self._request = request
        self._method = method
        self._route = route
        self._made: dict[str, t.Any] | None = None

    def _get(self) -> dict[str, t.Any]:
        made = self._made
        if made is None:
            made = self._made = self._tracing.attributes(self._request, self._method, self._route)
        return made

    def __getitem__(self, key: str) -> t.Any:
        return self._get()[key]

    def __iter__(self) -> t.Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def items(self) -> cabc.ItemsView[str, t.Any]:
        # The SDK copies a sampled span's attributes with items(), which the
        # Mapping default would do with a Python call per key.
        return self._get().items()


def _detach_render(handle: Handle) -> None:
    """Reset a render span's context, if it is still the current one.

    Not when no longer current: released, or made current in another
    thread's context (an async view's event loop, run by asgiref: resetting
    its token could only fail), or a context beneath it was reset already
    (opentelemetry-instrumentation-flask detaches its own at
    teardown_request): resetting would make current again what is over.
    """
    span, token, thread = handle
    if token is not None and thread == threading.get_ident() and trace.get_current_span() is span:
        context.detach(t.cast("Token[Context]", token))


def _global_provider() -> TracerProvider:
    """The global tracer provider, the API's way.

    ``Tracing.tracer`` reads the API module's variable instead where it can
    (:data:`_READ_GLOBAL`): ``trace.get_tracer_provider()`` tests
    ``os.environ`` on every call while no provider is set, 1.26 µs per
    request on the CI machine against 0.05 µs. Set by
    ``trace.set_tracer_provider`` or not at all, the variable says the same
    thing; where a provider is to be loaded from ``OTEL_PYTHON_TRACER_PROVIDER``,
    or the API's internals have moved, this function is called.
    """
    return trace.get_tracer_provider()


_PROXY = trace.ProxyTracerProvider()
_READ_GLOBAL = hasattr(trace, "_TRACER_PROVIDER") and (
    "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
)


def _host(environ: dict[str, t.Any]) -> str:
    """The Host header, else the server's name and port (as Werkzeug reads them)."""
    host = environ.get("HTTP_HOST")
    if host:
        return t.cast(str, host)
    name, port = environ.get("SERVER_NAME", ""), environ.get("SERVER_PORT", "")
    if ":" in name:  # an IPv6 address, bracketed as in a Host header
        name = f"[{name}]"
    return f"{name}:{port}" if port else t.cast(str, name)


def _span_name(method: str, route: str) -> str:
    if method == labels.OTHER:
        method = "HTTP"
    return f"{method} {route}" if route else method


def redact_query(query: str) -> str:
    """The query string with the values of :data:`SENSITIVE_QUERY_KEYS` redacted.

    A key is compared decoded (``Sig%6Eature`` is ``Signature``), as the app's
    ``request.args`` and opentelemetry-util-http read it; the rest of the
    query is kept as sent.
    """
    if "=" not in query:
        return query
    parts = query.split("&")
    changed = False
    for i, part in enumerate(parts):
        key, equals, _ = part.partition("=")
        if "%" in key or "+" in key:
            key = unquote_plus(key)
        if equals and key in SENSITIVE_QUERY_KEYS:
            parts[i] = part.partition("=")[0] + "=REDACTED"
            changed = True
    return "&".join(parts) if changed else query


def split_host(host: str, scheme: str) -> tuple[str, int | None]:
    """``server.address`` and ``server.port`` from a Host value (IPv6 aware)."""
    name, port = host, ""
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        name, rest = host[1:end], host[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    if port.isdigit():
        return name, int(port)
    return name, _DEFAULT_PORTS.get(scheme)


class TraceContextFilter(logging.Filter):
    """Adds the current span's ids to log records, so that logs join traces.

    Sets ``trace_id`` (32 hex digits), ``span_id`` (16) and ``trace_sampled``
    on every record, empty strings and False outside a span:

    .. code-block:: python

        handler = logging.StreamHandler()
        handler.addFilter(TraceContextFilter())
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s [trace_id=%(trace_id)s span_id=%(span_id)s] %(message)s"
        ))

    Add it to a handler (not a logger) so that records of every logger get it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = trace.format_trace_id(span_context.trace_id)
            record.span_id = trace.format_span_id(span_context.span_id)
            record.trace_sampled = span_context.trace_flags.sampled
        else:
            record.trace_id = record.span_id = ""
            record.trace_sampled = False
        return True


def span_event(tracing: Tracing, name: str, attributes: dict[str, str]) -> None:
    """An event on the current span, when ``tracing`` has a tracer and the span records.

    For the sends of the app's own signals (``declared.py``), which may not
    import OpenTelemetry; the caller chooses the attributes and bounds them.
    """
    if tracing.tracer() is not None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes)
