"""OpenTelemetry spans of requests, renders and flashes.

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

Names and status follow the stable HTTP semantic conventions for server spans.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import typing as t

from opentelemetry import context
from opentelemetry import trace
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.semconv.attributes import http_attributes
from opentelemetry.semconv.schemas import Schemas
from opentelemetry.trace import SpanKind
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode

from .. import labels
from ..forks import at_fork
from . import _compat
from .attributes import Capture as Capture  # the type Tracing is built with
from .attributes import OLD_STATUS_CODE
from .attributes import StartAttributes
from .propagation import extract_parent
from .propagation import inject_response
from .propagation import response_propagator

if t.TYPE_CHECKING:
    from contextvars import Token

    from flask import Flask
    from flask import Request
    from flask import Response
    from opentelemetry.context import Context
    from opentelemetry.trace import Span
    from opentelemetry.trace import Tracer
    from opentelemetry.trace import TracerProvider

logger = logging.getLogger("flask_signal_metrics")

_time_ns = time.time_ns
_perf_counter = time.perf_counter

#: Seconds between lookups of the global tracer provider while none is set.
_RECHECK = 1.0

#: The instrumentation scope of every span made here.
TRACER_NAME = "flask_signal_metrics"

#: The conventions' version whose (stable) HTTP names the spans carry, as
#: opentelemetry-instrumentation-flask says it in its ``http`` mode.
SCHEMA_URL = Schemas.V1_21_0.value

#: A span event per flashed message carries only this attribute: the category.
FLASH_EVENT = "flask.message_flashed"
FLASH_CATEGORY = "flask.flash.category"
TEMPLATE_NAME = "flask.template.name"


class ServerSpan:
    """A request's SERVER span, made by :meth:`Tracing.start`.

    ``span`` is None when it records nothing (not sampled); ``made`` is the
    span as made, recording or not (what the user's hooks get); ``token``
    resets the context it made current; ``start_ns`` is when the span began.
    """

    __slots__ = ("before", "made", "server", "span", "start_ns", "token")

    def __init__(
        self,
        span: Span | None,
        token: object,
        start_ns: int,
        made: Span,
        server: bool,
        before: Context,
    ) -> None:
        #: The context current before the request's: current again at its end.
        self.before = before
        self.span = span
        self.token = token
        self.start_ns = start_ns
        self.made = made
        #: SERVER, not INTERNAL under another library's server span: only a
        #: SERVER span carries the captured headers.
        self.server = server


class External:
    """The type of :data:`EXTERNAL`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EXTERNAL"


#: What :meth:`Tracing.start` returns for a request whose server span
#: another library makes (opentelemetry-instrumentation-flask): templates
#: and flashes still nest under that span, and exemplars link to it.
EXTERNAL: t.Final = External()

#: What a request's start holds of its server span.
Traced: t.TypeAlias = "ServerSpan | External | None"

#: What an INTERNAL span captures: no header (they are its SERVER span's).
_NO_CAPTURE = Capture()

_STATUS_CODE = http_attributes.HTTP_RESPONSE_STATUS_CODE
_ERROR_TYPE = error_attributes.ERROR_TYPE

_PROXY = trace.ProxyTracerProvider()
# See _compat.global_provider: the same read, inline in Tracing.tracer.
_TRACE_GLOBALS = _compat.TRACE_GLOBALS
_PROVIDER_KEY = _compat.PROVIDER_KEY
_READS_PROVIDER = _compat.READS_PROVIDER
_INSTRUMENTED_FLAG = _compat.INSTRUMENTED_FLAG


class RenderSpan(t.NamedTuple):
    """A render's span, its context token (None once released), the thread making it current."""

    span: Span
    token: object | None
    thread: int


class Tracing:
    """The spans of one app's requests, templates and flashed messages."""

    def __init__(
        self,
        provider: TracerProvider | None,
        version: str,
        capture: Capture,
        old_names: bool = False,
    ) -> None:
        self._fixed = provider
        #: OTEL_SEMCONV_STABILITY_OPT_IN=http/dup: the old attribute names too.
        self._old = old_names
        self._version = version
        self._capture = capture
        self._seen: object = None
        self._tracer: Tracer | None = None
        self._warned_external = False
        #: Until then (``time.perf_counter``) no tracer will be found: the
        #: receivers skip this object rather than look the provider up on
        #: every request.
        self.idle_until = -math.inf
        at_fork(self._forked)

    def _forked(self) -> None:
        # A worker configures its own provider (gunicorn's post_fork, say).
        self.idle_until = -math.inf

    def tracer(self) -> Tracer | None:
        """The tracer to use now, or None when no SDK is configured."""
        provider = self._fixed
        if provider is None:
            # _compat.global_provider() inline (called per request).
            provider = (
                _TRACE_GLOBALS[_PROVIDER_KEY] if _READS_PROVIDER else trace.get_tracer_provider()
            )
            if provider is None:
                provider = _PROXY
        if provider is not self._seen:
            # A new global provider (set after init_app): resolve once more.
            tracer: Tracer | None = None
            if not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
                tracer = provider.get_tracer(TRACER_NAME, self._version, SCHEMA_URL)
                if isinstance(tracer, trace.NoOpTracer):  # OTEL_SDK_DISABLED
                    tracer = None
            self._tracer = tracer
            self._seen = provider
        return self._tracer

    # -- server spans ---------------------------------------------------------

    def start(
        self, app: Flask, request: Request, method: str, route: str
    ) -> ServerSpan | External | None:
        """Start the request's SERVER span and make it current.

        :param method: the normalised method (``_OTHER`` for unknown ones).
        :param route: the route template with the app root, ``""`` if none matched.
        :returns: the request's :class:`ServerSpan`; or :data:`EXTERNAL`
            when opentelemetry-instrumentation-flask makes the app's server
            spans, or None when there is no tracer.
        """
        tracer = self.tracer()
        if tracer is None:
            self.idle_until = _perf_counter() + (_RECHECK if self._fixed is None else math.inf)
            return None
        # _compat.instrumented_by_opentelemetry(app) inline.
        if getattr(app, _INSTRUMENTED_FLAG, False):
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
        capture = self._capture
        parent: Context | None
        current = context.get_current()
        # An empty current context (the usual case) holds no span: skip the lookup.
        if current and trace.get_current_span(current).get_span_context().is_valid:
            # A WSGI middleware around the app (opentelemetry-instrumentation-
            # wsgi, say) already made the server span: nest under it as
            # INTERNAL, as the contrib instrumentations do, not a second SERVER.
            parent, kind, capture = None, SpanKind.INTERNAL, _NO_CAPTURE
        else:
            parent = extract_parent(request.environ)
        span = tracer.start_span(
            _span_name(method, route),
            parent,
            kind,
            StartAttributes(capture, request, method, route, self._old),
            start_time=start_ns,
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        if not span.is_recording():
            # Not sampled: its context must be current (what the view's spans
            # and outgoing calls inherit), but nothing is ended, set or linked.
            return ServerSpan(None, token, 0, span, kind is SpanKind.SERVER, current)
        return ServerSpan(span, token, start_ns, span, kind is SpanKind.SERVER, current)

    def finish(
        self,
        span: Span,
        status: int,
        error: str,
        exception: BaseException | None,
        response: Response | None,
        end_ns: int,
        server: bool = True,
    ) -> None:
        """End a recording server span: status code, error, captured response headers.

        :param server: a SERVER span (an INTERNAL one carries no headers).
        """
        if not span.is_recording():
            return  # the view ended it already: adding to it would only warn
        span.set_attribute(_STATUS_CODE, status)
        if self._old:
            span.set_attribute(OLD_STATUS_CODE, status)
        if error:
            span.set_attribute(_ERROR_TYPE, error)
            # 5xx and escaped exceptions are errors; a 4xx is the client's and stays unset.
            description = None if exception is None else f"{error}: {exception}"
            span.set_status(Status(StatusCode.ERROR, description))
        if exception is not None:
            span.record_exception(exception)
        capture = self._capture
        if server and capture.response is not None and response is not None:
            span.set_attributes(
                capture.headers("http.response.header.", capture.response, response.headers.items())
            )
        span.end(end_ns)

    @staticmethod
    def responds() -> bool:
        """Whether a global response propagator is set (``traceresponse`` to add)."""
        return response_propagator() is not None

    @staticmethod
    def respond(span: Span, response: Response) -> None:
        """Before the response is sent: the global response propagator's headers."""
        inject_response(span, response.headers)

    @staticmethod
    def detach(traced: ServerSpan) -> None:
        """Make the context before the request's current again (at its teardown).

        Should ``detach`` fail (a patched or broken runtime context), the
        context before is attached again: the thread's next request must not
        start under this one's ended span.
        """
        try:
            context.detach(t.cast("Token[Context]", traced.token))
        except BaseException:
            context.attach(traced.before)
            raise

    # -- templates and flashes ------------------------------------------------

    @staticmethod
    def render_started(tracer: Tracer, name: str) -> RenderSpan:
        """A child span for a template render, made current while it renders."""
        span = tracer.start_span(f"render {name}", attributes={TEMPLATE_NAME: name})
        token = context.attach(trace.set_span_in_context(span))
        return RenderSpan(span, token, threading.get_ident())

    @staticmethod
    def render_ended(handle: RenderSpan, failed: bool = False) -> None:
        span = handle.span
        try:
            if failed:
                # template_rendered never came: the render raised.
                span.set_status(Status(StatusCode.ERROR))
            span.end()  # a span processor of the user's may raise here
        finally:
            _detach_render(handle)

    @staticmethod
    def release(handle: RenderSpan) -> RenderSpan:
        """A render span no longer current, still open (a streamed template's)."""
        _detach_render(handle)
        return RenderSpan(handle.span, None, handle.thread)

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


#: Whether opentelemetry-instrumentation-flask instruments an app: its spans
#: and its OpenTelemetry metrics are the app's, ours are not made.
instrumented_elsewhere = _compat.instrumented_by_opentelemetry


def _detach_render(handle: RenderSpan) -> None:
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


def _span_name(method: str, route: str) -> str:
    if method == labels.OTHER:
        method = "HTTP"
    return f"{method} {route}" if route else method


def span_event(tracing: Tracing, name: str, attributes: dict[str, str]) -> None:
    """An event on the current span, when ``tracing`` has a tracer and the span records.

    For the sends of the app's own signals (``declared.py``), which may not
    import OpenTelemetry; the caller chooses the attributes and bounds them.
    """
    if tracing.tracer() is not None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes)
