"""What the receivers keep in a request's WSGI environ, and how they read it.

What is known of a request lives in its WSGI environ, which outlives the
request context (streaming re-pushes it) and is per request by construction:
each key written by one signal with one dict store.
"""

from __future__ import annotations

import time
import typing as t

from .. import _compat

if t.TYPE_CHECKING:
    from flask.ctx import RequestContext
    from flask.wrappers import Response

    from ..state import Route
    from ..tracing.spans import Traced

#: The response from request_finished (the last one wins); read at teardown.
RESPONSE_KEY = "flask_signal_metrics.response"
#: The exception from got_request_exception.
ERROR_KEY = "flask_signal_metrics.error"
#: The id of the request context whose stream is being sent.
STREAM_CONTEXT = "flask_signal_metrics.stream"
#: When request_finished saw a response whose body is not yet produced.
READY_KEY = "flask_signal_metrics.ready"
#: Where opentelemetry-instrumentation-flask keeps its server span in the
#: environ (its own key; still there at our teardown).
CONTRIB_SPAN_KEY = "opentelemetry-flask.span_key"

DONE = "done"
#: The environ value while a streamed body is being sent.
STREAMING = "streaming"
MISSING = object()

perf_counter = time.perf_counter


class Start:
    """A request's start, kept in its environ at ``START_KEY`` until it is recorded.

    ``began`` (``perf_counter``), its :class:`~.state.Route`, ``traced``
    (its :class:`~.tracing.spans.ServerSpan`, ``EXTERNAL`` or None) and
    ``ctx``, the request context: the object, compared with ``is`` at
    teardown, which then drops the record (the cycle through the environ
    lasts as long as the request).

    Made on every request, without an ``__init__``: ``Start()`` and four
    slot stores cost less than a call of Python code (:func:`make_start`).
    """

    __slots__ = ("began", "ctx", "route", "traced")

    began: float
    route: Route
    traced: Traced
    ctx: RequestContext


def make_start(began: float, route: Route, traced: Traced, ctx: RequestContext) -> Start:
    """A :class:`Start` (``on_request_started``'s fast path makes its own inline)."""
    start = Start()
    start.began = began
    start.route = route
    start.traced = traced
    start.ctx = ctx
    return start


#: The current request's context: ``current_context()`` raises outside a
#: request, ``current_context(None)`` returns None. The bound ``get`` of the
#: context's variable (:mod:`._compat`): a plain ``ContextVar.get`` where
#: Flask has one, not a call through the ``flask.request`` proxy. Bound once:
#: CPython 3.11 compiles ``name.get()`` on an imported ``name`` as an
#: attribute load, which binds a new method object on every call.
current_context = _compat.current_context.get


#: Statuses whose responses carry no body (Werkzeug sends none, as RFC 9110 says).
NO_BODY = frozenset((100, 101, 102, 103, 204, 304))

#: CONTENT_LENGTH values of a request without a body (absent, empty, zero).
EMPTY = (None, "", "0")


def request_body_size(environ: dict[str, t.Any]) -> int | None:
    """The declared body size; None when chunked or malformed (not guessed)."""
    if environ.get("CONTENT_LENGTH") in EMPTY and "HTTP_TRANSFER_ENCODING" not in environ:
        return 0  # the common case first
    try:
        return max(int(environ["CONTENT_LENGTH"]), 0)
    except (KeyError, ValueError):
        return None if "HTTP_TRANSFER_ENCODING" in environ else 0


def body_size(body: list[bytes]) -> int:
    # Flask's own bodies are one bytes object: its length is read without
    # the generic sum.
    return len(body[0]) if len(body) == 1 else sum(map(len, body))


#: ``response.status_code`` read the cheap way (:mod:`._compat`).
status_code: t.Callable[[Response], int] = _compat.status_code
