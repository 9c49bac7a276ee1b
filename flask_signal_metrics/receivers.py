"""The receivers of Flask's signals: the only module that connects to signals.

Rules every receiver here keeps (see Flask's and blinker's sources):

- It is a module-level function, connected with ``sender=app``: blinker holds
  receivers weakly by default, so a closure made in ``init_app`` would vanish.
  One set of functions serves every app; per-app state is found through the
  sender, ``app.extensions["signal_metrics"]``.
- It never raises. An exception in a receiver turns a 200 into a 500, or
  escapes ``wsgi_app``, and skips the other receivers of that signal; so each
  body is wrapped, the failure is logged once per cause and counted in
  ``flask_signal_metrics_receiver_errors_total{signal}``.
- A request is recorded exactly once, in ``request_tearing_down``: it is the
  only end-of-request signal Flask always sends (``request_finished`` is not
  sent when ``PROPAGATE_EXCEPTIONS`` re-raises), ``request_finished`` can be
  sent twice (when one of its receivers raises), and with
  ``stream_with_context`` Flask 3.1 sends ``request_tearing_down`` twice.
"""

from __future__ import annotations

import contextvars
import functools
import operator
import time
import typing as t

from flask import signals
from flask import wrappers

from . import _compat
from . import labels
from .state import EXTENSION_KEY
from .state import logger
from .state import NO_RECORDERS
from .state import Route
from .state import START_KEY
from .state import State
from .tracing.spans import EXTERNAL
from .tracing.spans import Tracing

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Response
    from flask.ctx import RequestContext
    from jinja2 import Template

    from .metrics.catalogue import Metrics

# What is known of a request lives in its WSGI environ, which outlives the
# request context (streaming re-pushes it) and is per request by construction:
# three keys, each written by one signal with one dict store. The start is a
# tuple, cheaper to make than an object.

#: The response from request_finished (the last one wins); read at teardown.
RESPONSE_KEY = "flask_signal_metrics.response"
#: The exception from got_request_exception.
ERROR_KEY = "flask_signal_metrics.error"
#: The id of the request context whose stream is being sent.
_STREAM_CONTEXT = "flask_signal_metrics.stream"
#: When request_finished saw a response whose body is not yet produced.
READY_KEY = "flask_signal_metrics.ready"
#: Where opentelemetry-instrumentation-flask keeps its server span in the
#: environ (its own key; still there at our teardown).
CONTRIB_SPAN_KEY = "opentelemetry-flask.span_key"

_DONE = "done"
#: The environ value while a streamed body is being sent.
_STREAMING = "streaming"
_MISSING = object()

_perf_counter = time.perf_counter

#: (start, the request's :data:`~.state.Route`, the server span: (span or
#: None if it records nothing, context token, start in ns), "external" or
#: None, the request context). The context, not its id: compared with ``is``
#: at teardown, which then drops the tuple (the cycle through the environ
#: lasts as long as the request).
_Start = tuple[float, Route, t.Any, "RequestContext"]


#: The request context's variable (:mod:`._compat`), read inline by each
#: receiver: a plain ``ContextVar.get`` where Flask has one, not a call
#: through the ``flask.request`` proxy.
_context = _compat.current_context


def _begin(
    app: Flask, ctx: RequestContext, in_flight: bool, began: float | None = None
) -> _Start | None:
    """Note the request's start, or mark the request excluded (``None``).

    The whole way, for what :func:`_on_request_started` does not look up in
    one step: a request not seen before, excluded, traced or started late.
    """
    state: State = app.extensions[EXTENSION_KEY]
    request = ctx.request
    environ = request.environ
    rule = request.url_rule
    if rule is None:
        if request.path == state.settings.path:
            # The metrics route, with a method it does not take (a 405).
            environ[START_KEY] = None
            return None
        route = ""
    else:
        info = state.rules.get(id(rule))
        route, excluded = info if info is not None else state.rule_info(app, rule)
        if excluded:
            environ[START_KEY] = None
            return None
        if request.root_path:
            route = request.root_path + route
    if state.exclude_path is not None and state.exclude_path.fullmatch(request.path):
        environ[START_KEY] = None
        return None
    lane = state.lanes.get((request.method, request.scheme)) or state.lane(
        request.method, request.scheme
    )
    if began is None:
        began = _perf_counter()
    traced: t.Any = None
    found: Route
    if in_flight:
        if state.tracing is not None:
            # Before the in-flight count: a sampler or provider that raises here
            # must not leave a request counted in flight that nothing ends.
            traced = state.tracing.start(app, request, lane[0], route)
        found = state.route(rule, request, lane, route)
        next(lane[2].started)
    else:
        # A late start is not counted in flight.
        found = (lane[0], lane[1], route, None, NO_RECORDERS)
    start = (began, found, traced, ctx)
    environ[START_KEY] = start
    return start


def _started(app: Flask, ctx: RequestContext) -> _Start | None:
    """The request's start; noted late if ``request_started`` missed it.

    Our ``request_started`` receiver is skipped when another receiver of that
    signal raises first (blinker stops at the first exception), or when the
    request failed before dispatch; the request must still be counted (its
    duration then starts late). A late start is not counted in flight:
    nothing would balance it.
    """
    found = ctx.request.environ.get(START_KEY, _MISSING)
    if found is _MISSING:
        return _begin(app, ctx, False)
    if found is None or found is _DONE or found is _STREAMING:
        return None
    return t.cast(_Start, found)


#: Statuses whose responses carry no body (Werkzeug sends none, as RFC 9110 says).
_NO_BODY = frozenset((100, 101, 102, 103, 204, 304))

#: A bound on the statuses of one route recorded in one call: a view may
#: return any number.
_MAX_RECORDERS = 32

#: CONTENT_LENGTH values of a request without a body (absent, empty, zero).
_EMPTY = (None, "", "0")


def _request_size(environ: dict[str, t.Any]) -> int | None:
    """The declared body size; None when chunked or malformed (not guessed)."""
    if environ.get("CONTENT_LENGTH") in _EMPTY and "HTTP_TRANSFER_ENCODING" not in environ:
        return 0  # the common case first
    try:
        return max(int(environ["CONTENT_LENGTH"]), 0)
    except (KeyError, ValueError):
        return None if "HTTP_TRANSFER_ENCODING" in environ else 0


def _body_size(body: list[bytes]) -> int:
    # Flask's own bodies are one bytes object: its length is read without
    # the generic sum.
    return len(body[0]) if len(body) == 1 else sum(map(len, body))


#: ``response.status_code``: Werkzeug's property returns ``_status_code``,
#: which this reads where it exists (the property is a Python call);
#: else the property.
_status_code: t.Callable[[Response], int] = operator.attrgetter(
    "_status_code"
    if isinstance(getattr(wrappers.Response(status=418), "_status_code", None), int)
    else "status_code"
)


# -- receivers -------------------------------------------------------------


def _on_request_started(sender: Flask, **extra: object) -> None:
    try:
        ctx = _context.get()
        request = ctx.request
        environ = request.environ
        state: State = sender.extensions[EXTENSION_KEY]
        # One lookup for what _begin works out, and the in-flight count. The
        # key is State.route's, inline.
        found = state.routes.get(
            (id(request.url_rule), request.method, request.scheme, request.root_path)
        )
        began = _perf_counter()
        tracing = state.tracing
        exclude = state.exclude_path
        if (
            found is None
            or (tracing is not None and began >= tracing.idle_until)
            or (exclude is not None and exclude.fullmatch(request.path))
        ):
            _begin(sender, ctx, True, began)
            return
        next(found[3].started)
        environ[START_KEY] = (began, found, None, ctx)
    except Exception as e:
        _failed(sender, signals.request_started.name, e)


def _on_request_finished(sender: Flask, response: Response, **extra: object) -> None:
    try:
        # Sent again with the 500 when one of its receivers raised: the last
        # one is what the server sends. What it says is read once, at teardown.
        environ = _context.get().request.environ
        environ[RESPONSE_KEY] = response
        if type(response.response) is not list:
            # Maybe a stream, whose body may be produced before teardown
            # (Flask 3.0 with stream_with_context): note when it was ready.
            environ[READY_KEY] = _perf_counter()
    except Exception as e:
        _failed(sender, signals.request_finished.name, e)


def _on_got_request_exception(sender: Flask, exception: BaseException, **extra: object) -> None:
    try:
        ctx = _context.get()
        start = _started(sender, ctx)
        if start is not None:
            ctx.request.environ[ERROR_KEY] = exception
            state: State = sender.extensions[EXTENSION_KEY]
            assert state.metrics is not None
            key = (start[1][0], start[1][2], type(exception).__qualname__)
            state.metrics.exceptions.child(key).inc()
        # The exception left the view: a render still open is one it escaped
        # from. Ended now, the error page is not nested in it.
        _end_renders()
    except Exception as e:
        _failed(sender, signals.got_request_exception.name, e)


def _on_request_tearing_down(
    sender: Flask, exc: BaseException | None = None, **extra: object
) -> None:
    """Record the request, once: Flask 3.1 tears a streamed request down twice."""
    try:
        ctx = _context.get()
        environ = ctx.request.environ
        start = environ.get(START_KEY)
        # The common case in one call: a request started here, without a span,
        # error or exception, whose buffered body has a status and method
        # recorded in full before (its recorder). Everything else: _tear_down.
        if type(start) is tuple and start[3] is ctx and start[2] is None and exc is None:
            response = environ.get(RESPONSE_KEY)
            if response is not None and ERROR_KEY not in environ:
                body = response.response
                if type(body) is list:
                    recorder = start[1][4].get(_status_code(response))
                    if recorder is not None:
                        environ[START_KEY] = _DONE
                        duration = _perf_counter() - start[0]
                        # _request_size's common case and _body_size, inline:
                        # no call on the common path.
                        if environ.get("CONTENT_LENGTH") in _EMPTY and (
                            "HTTP_TRANSFER_ENCODING" not in environ
                        ):
                            request_size: int | None = 0
                        else:
                            request_size = _request_size(environ)
                        size = len(body[0]) if len(body) == 1 else sum(map(len, body))
                        recorder.add(duration, request_size, size)
                        return
        _tear_down(sender, ctx, environ, exc)
    except Exception as e:
        _failed(sender, signals.request_tearing_down.name, e)


def _tear_down(
    app: Flask, ctx: RequestContext, environ: dict[str, t.Any], exc: BaseException | None
) -> None:
    """The teardown, the whole way."""
    if exc is not None and type(exc) is GeneratorExit:
        exc = None  # Flask 3.0: the server closed a stream unread; not the app's error
    start = environ.get(START_KEY, _MISSING)
    if start is _MISSING:
        if RESPONSE_KEY not in environ:
            # Neither started, nor answered, nor failed (each would have
            # noted it): a context pushed outside a request, such as
            # test_request_context() for url_for in a job. Not a request,
            # but a render of its that raised is over.
            _end_renders(owner=id(ctx))
            return
        start = _started(app, ctx)
    elif start is _STREAMING:
        # The second teardown of a stream_with_context body: it ended,
        # maybe raising (not a copied context's, popped meanwhile).
        if exc is not None and environ.get(_STREAM_CONTEXT) == id(ctx):
            environ[ERROR_KEY] = exc
        return
    if start is None:
        return  # excluded stays None: a streamed template renders after teardown
    if start is _DONE or start[3] is not ctx:
        # A copy of the request's context (copy_current_request_context,
        # for a thread or greenlet) popped with the same environ: the
        # request itself is not over (or was recorded), but a render of
        # the copy's that raised is.
        _end_renders(owner=id(ctx))
        return
    environ[START_KEY] = _DONE
    response: Response | None = environ.get(RESPONSE_KEY)
    size: int | None
    if response is None:
        # request_finished was never sent: the exception propagated
        # (testing/debug mode) and the server answers 500.
        status, size = 500, None
    else:
        status, body = response.status_code, response.response
        if status in _NO_BODY or environ.get("REQUEST_METHOD") == "HEAD":
            size = 0  # the server sends no body, whatever the response holds
        elif type(body) is list:  # a buffered body: its bytes are the truth
            # The shape _on_request_tearing_down records in one step.
            _record(app, environ, start, response, status, _body_size(body), exc, one_step=True)
            return
        else:
            # An iterable of declared length (an error page, a file) is
            # recorded now; sending it is the server's business.
            size = response.content_length
            if size is None and not response.direct_passthrough:
                _defer_to_close(app, environ, start, response, exc)
                return
            # With direct_passthrough (send_file of an open file) the
            # server gets the file's wrapper and closes that, never the
            # response: recorded now, its size unknown.
    _record(app, environ, start, response, status, size, exc)


def _defer_to_close(
    app: Flask,
    environ: dict[str, t.Any],
    start: _Start,
    response: Response,
    exc: BaseException | None,
) -> None:
    """A stream of unknown length: the server produces the body after teardown.

    The request ends when the server closes the body, and stays in flight
    until then; the time to the response object is recorded now.
    """
    environ[START_KEY] = _STREAMING
    environ[_STREAM_CONTEXT] = id(start[3])
    if start[2] is not None:
        _release_context(start[2])
    response.call_on_close(functools.partial(_close_stream, app, environ, start, response, exc))
    metrics: Metrics = app.extensions[EXTENSION_KEY].metrics
    ready = metrics.stream_ready.child((start[1][0], start[1][2], str(response.status_code)))
    ready.observe(environ.get(READY_KEY, start[0]) - start[0])


def _close_stream(
    app: Flask,
    environ: dict[str, t.Any],
    start: _Start,
    response: Response,
    exc: BaseException | None,
) -> None:
    """Record a streamed request when the server closes its body (once: it may close twice)."""
    try:
        if environ.get(START_KEY) is not _STREAMING:
            return
        environ[START_KEY] = _DONE
        # Released at the teardown (_defer_to_close).
        _record(app, environ, start, response, response.status_code, None, exc, released=True)
    except Exception as e:
        _failed(app, signals.request_tearing_down.name, e)


def _record(
    app: Flask,
    environ: dict[str, t.Any],
    start: _Start,
    response: Response | None,
    status: int,
    response_size: int | None,
    exc: BaseException | None,
    released: bool = False,
    one_step: bool = False,
) -> None:
    """Record one finished request (the duration ends now) and end its span.

    :param response: None when request_finished was never sent (the
        exception propagated): the server answers 500.
    :param released: a stream's first teardown released the request's context.
    :param one_step: the response is of the shape the next such request can
        be recorded in one step (a buffered body the server sends).
    """
    began, found, traced, _ = start
    method, scheme, route, group, recorders = found
    duration = _perf_counter() - began
    exception = environ.get(ERROR_KEY) or exc
    error = "" if exception is None and status < 500 else labels.error_type(status, exception)
    status_label = str(status)
    request_size = _request_size(environ)
    state: State = app.extensions[EXTENSION_KEY]
    exemplar = span = None
    if traced is not None:
        span = environ.get(CONTRIB_SPAN_KEY) if traced is EXTERNAL else traced[0]
        if span is not None:
            exemplar = Tracing.sampled_ids(span)
    metrics: Metrics = state.metrics  # type: ignore[assignment]  # set while connected
    try:
        key = (method, route, status_label, scheme, error)
        metrics.requests.record(key, group, duration, request_size, response_size, exemplar)
        if exception is not None and metrics.escaped is not None:  # classic naming
            metrics.escaped.child((method, status_label)).inc()
        if (
            one_step
            and not error
            # The HEAD route holds "head" requests, whose body Werkzeug sends,
            # and "HEAD" ones, whose body it drops: never one step.
            and method != "HEAD"
            and type(recorders) is dict
            and status not in recorders
            and len(recorders) < _MAX_RECORDERS
        ):
            # The next such request of this route is recorded in one call
            # (_on_request_tearing_down), unless its series overflowed.
            recorder = metrics.requests.recorder(key, group)
            if recorder is not None:
                recorders[status] = recorder
    finally:
        if traced is not None:
            # After the metrics: a span processor of the user's that raises
            # cannot cost the request its metrics; and whatever recording
            # did, nothing of the request stays current, and its span ends.
            try:
                _end_context(traced, released)
            finally:
                if type(traced) is tuple and traced[0] is not None:
                    # The span ends when the recorded duration does.
                    end_ns = traced[2] + int(duration * 1e9)
                    state.tracing.finish(  # type: ignore[union-attr]  # traced came from it
                        traced[0], status, error, exception, response, end_ns
                    )


def _release_context(traced: t.Any) -> None:
    """At a stream's first teardown: what the request made current stops being so.

    Its body is produced after this teardown, maybe in another thread, maybe
    never (a client gone, a middleware that drops ``close()``): a context
    left current would make the thread's next request a child of this one.
    At the teardown, after the app's own teardown functions, so that contexts
    they attached in ``before_request`` are detached in order. The spans stay
    open: a streamed template's render ends when its body does, the
    request's span when the server closes the body. Spans made while the
    body is produced are not the request's children. (Flask 3.0's
    ``stream_with_context`` tears down only when the body ends: a body the
    server never closes keeps the request current there.)
    """
    stack = _renders.get(None)
    if stack:
        for index in range(len(stack) - 1, -1, -1):  # innermost first, as tokens nest
            template_id, began, render, owner = stack[index]
            if render is not None:
                stack[index] = (template_id, began, Tracing.release(render), owner)
    if type(traced) is tuple:
        Tracing.detach(traced[1])


def _end_context(traced: t.Any, released: bool) -> None:
    """When the request is over: end what the request made current.

    Renders whose template raised never sent template_rendered: their spans
    end here, as failed, innermost first, so that each context token is
    reset in order and the request's own parent context is current again.

    :param released: the request's context was released already.
    """
    try:
        _end_renders()
    finally:
        if type(traced) is tuple and not released:
            Tracing.detach(traced[1])


def _end_renders(owner: int | None = None) -> None:
    """End the innermost renders (those begun under request context ``owner``) as failed."""
    stack = _renders.get(None)
    failure: Exception | None = None
    while stack and (owner is None or stack[-1][3] == owner):
        render = stack.pop()[2]
        if render is not None:
            try:
                Tracing.render_ended(render, failed=True)
            except Exception as e:  # a span processor's: end the others first
                failure = failure or e
    if failure is not None:
        raise failure


#: (id of the template, start time, span or None, id of the request context
#: or 0) of a render begun and not ended.
_Render = tuple[int, float, t.Any, int]
#: The renders of this context, innermost last.
_renders: contextvars.ContextVar[list[_Render]] = contextvars.ContextVar(
    "flask_signal_metrics_renders"
)
#: A render that raised never sends template_rendered; past this depth the
#: stack holds only such leftovers and is cleared.
_MAX_RENDER_DEPTH = 64


def _in_excluded_request(found: t.Any = _MISSING) -> bool:
    if found is _MISSING:
        found = _context.get(None)
    return found is not None and found.request.environ.get(START_KEY, _MISSING) is None


def _on_before_render_template(sender: Flask, template: Template, **extra: object) -> None:
    try:
        stack = _renders.get(None)
        if stack is None:
            stack = []
            _renders.set(stack)
        elif len(stack) >= _MAX_RENDER_DEPTH:
            _end_renders()
        render = None
        ctx = _context.get(None)
        began = _perf_counter()
        tracing: Tracing | None = sender.extensions[EXTENSION_KEY].tracing
        if tracing is not None and began >= tracing.idle_until:
            tracer = tracing.tracer()
            # The exclusion lookup only when a span would be made (no SDK: none).
            if tracer is not None and not _in_excluded_request(ctx):
                render = Tracing.render_started(tracer, labels.template(template.name))
        stack.append((id(template), began, render, 0 if ctx is None else id(ctx)))
    except Exception as e:
        _failed(sender, signals.before_render_template.name, e)


def _on_template_rendered(sender: Flask, template: Template, **extra: object) -> None:
    try:
        end = _perf_counter()
        stack = _renders.get(None)
        while stack:
            template_id, start, render, _ = stack.pop()
            if render is not None:
                # An entry left by a render that raised ends as failed.
                Tracing.render_ended(render, failed=template_id != id(template))
            if template_id == id(template):
                # _in_excluded_request inline, and the series kept by name:
                # no call and no label lookup in the family on every render.
                ctx = _context.get(None)
                if ctx is None or ctx.request.environ.get(START_KEY, _MISSING) is not None:
                    state: State = sender.extensions[EXTENSION_KEY]
                    name = template.name
                    observe = state.renders.get(name) or state.render_observer(name)
                    observe(end - start)
                return
    except Exception as e:
        _failed(sender, signals.template_rendered.name, e)


def _on_message_flashed(sender: Flask, category: object = "message", **extra: object) -> None:
    try:
        if not _in_excluded_request():
            state: State = sender.extensions[EXTENSION_KEY]
            assert state.metrics is not None
            state.metrics.flashes.child((str(category),)).inc()
            if state.tracing is not None:
                state.tracing.flashed(str(category))
    except Exception as e:
        _failed(sender, signals.message_flashed.name, e)


# -- failures ----------------------------------------------------------------

#: Causes already logged are only counted; past this many, nothing more is kept.
_MAX_LOGGED_CAUSES = 1000


def _failed(app: Flask, signal: str, error: Exception) -> None:
    """Count a receiver's failure and log it the first time its cause is seen."""
    try:
        state: State | None = app.extensions.get(EXTENSION_KEY)
        if state is None or state.metrics is None:
            return
        state.metrics.receiver_errors.child((signal,)).inc()
        frame, line = "?", 0
        tb = error.__traceback__
        while tb is not None:
            frame, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
            tb = tb.tb_next
        cause = (signal, type(error).__qualname__, frame, line)
        seen = state.logged_failures
        if cause not in seen and len(seen) < _MAX_LOGGED_CAUSES:
            seen.add(cause)
            logger.error(
                "flask-signal-metrics: the %s receiver failed; the request is"
                " unaffected. Further failures with this cause are only counted"
                " in flask_signal_metrics_receiver_errors_total.",
                signal,
                exc_info=error,
            )
    except Exception:
        pass  # nothing may escape into the request, not even from here


RECEIVERS: tuple[tuple[t.Any, t.Callable[..., None]], ...] = (
    (signals.request_started, _on_request_started),
    (signals.request_finished, _on_request_finished),
    (signals.got_request_exception, _on_got_request_exception),
    (signals.request_tearing_down, _on_request_tearing_down),
    (signals.before_render_template, _on_before_render_template),
    (signals.template_rendered, _on_template_rendered),
    (signals.message_flashed, _on_message_flashed),
)

#: The blinker names of the signals listened to, e.g. ``request-started``.
SIGNAL_NAMES: tuple[str, ...] = tuple(signal.name for signal, _ in RECEIVERS)


def connect(app: Flask) -> None:
    """Connect every receiver for ``app`` only (``sender=app``)."""
    for signal, receiver in RECEIVERS:
        signal.connect(receiver, sender=app, weak=False)


def connect_declared(signal: t.Any, receiver: t.Callable[..., None], sender: t.Any) -> None:
    """Connect a declaration (or the user's receiver it decorates) to the app's signal.

    Held strongly (``weak=False``): a declaration may be the only reference to
    its receiver. Unlike Flask's signals, the app's have any sender: ``sender``
    is blinker's ``ANY`` unless the user names one.
    """
    signal.connect(receiver, sender=sender, weak=False)
