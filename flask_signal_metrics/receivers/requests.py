"""The request signals: a request's start, response, exception and teardown."""

from __future__ import annotations

import functools
import typing as t

from flask import after_this_request
from flask import signals

from .. import labels
from ..state import EXTENSION_KEY
from ..state import NO_RECORDERS
from ..state import Route
from ..state import START_KEY
from ..state import VIEWS_KEY
from ..tracing.spans import instrumented_elsewhere
from ..tracing.spans import ServerSpan
from ..tracing.spans import Tracing
from ..views import Viewed
from .environ import body_size
from .environ import current_context
from .environ import DONE
from .environ import EMPTY
from .environ import ERROR_KEY
from .environ import make_start
from .environ import MISSING
from .environ import NO_BODY
from .environ import perf_counter
from .environ import READY_KEY
from .environ import request_body_size
from .environ import RESPONSE_KEY
from .environ import Start
from .environ import status_code
from .environ import STREAM_CONTEXT
from .environ import STREAMING
from .failures import call_hook
from .failures import failed
from .recording import record
from .recording import route_template
from .streams import defer_to_close
from .templates import end_renders
from .views import begin_views
from .views import end_views

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Request
    from flask import Response
    from flask.ctx import RequestContext
    from opentelemetry.trace import Span

    from ..grouping import Grouping
    from ..state import State
    from ..state import ViewSet
    from ..tracing.spans import Traced


def _begin(
    app: Flask, ctx: RequestContext, in_flight: bool, began: float | None = None
) -> Start | None:
    """Note the request's start, or mark the request excluded (``None``).

    The whole way, for what :func:`on_request_started` does not look up in
    one step: a request not seen before, excluded, traced or started late.
    """
    state: State = app.extensions[EXTENSION_KEY]
    request = ctx.request
    environ = request.environ
    rule = request.url_rule
    if began is None:
        began = perf_counter()
    settings = state.settings
    if rule is None:
        if request.path in state.metrics_paths:
            # The metrics route, with a method it does not take (a 405).
            environ[START_KEY] = None
            return None
        views: ViewSet | None = None
        route, excluded = "", False
    else:
        info = state.rules.get(id(rule)) or state.rule_info(app, rule)
        route, views, excluded = info.route, info.views, info.excluded
        if info.excluded_all:
            environ[VIEWS_KEY] = Viewed.EXCLUDED  # decorated functions record nothing either
            environ[START_KEY] = None
            return None
        if request.root_path and settings.group_by.name == "route":
            route = request.root_path + route
    path_excluded = (
        state.exclude_path is not None and state.exclude_path.fullmatch(request.path)
    ) or (state.excluded_urls is not None and state.excluded_urls.url_disabled(request.url))
    if path_excluded and settings.exclude_view_metrics:
        environ[VIEWS_KEY] = Viewed.EXCLUDED
    elif views is not None and in_flight:
        begin_views(app, ctx, views, began)
    if excluded or path_excluded:
        environ[START_KEY] = None
        return None
    if not settings.group_by.per_rule:
        route = _group(app, request, settings.group_by)
    lane = state.lanes.get((request.method, request.scheme)) or state.lane(
        request.method, request.scheme
    )
    traced: Traced = None
    found: Route
    if in_flight:
        if state.meters is not None:
            # Not while another instrumentation's OTel metrics are the app's.
            state.meters.counting = not instrumented_elsewhere(app)
        # Before the in-flight count: a span that fails to start leaves
        # nothing started (no span, no context, no count) that nothing ends.
        if state.tracing is not None:
            template = route_template(state, request, route)
            traced = state.tracing.start(app, request, lane.method, template)
            if type(traced) is ServerSpan:
                if Tracing.responds():
                    # The response propagator's headers, on this request's response only.
                    after_this_request(functools.partial(_respond, app, traced.made))
                if settings.request_hook is not None:
                    hook = settings.request_hook
                    call_hook(app, signals.request_started.name, hook, traced.made, environ)
        found = state.route(rule, request, lane, route, settings.group_by.per_rule, views)
        next(lane.group.started)
    else:
        # A late start is not counted in flight.
        found = Route(lane, route, None, NO_RECORDERS)
    start = make_start(began, found, traced, ctx)
    environ[START_KEY] = start
    return start


def _respond(app: Flask, span: Span, response: Response) -> Response:
    """An ``after_this_request`` function: the response propagator's headers (``traceresponse``)."""
    try:
        Tracing.respond(span, response)
    except Exception as e:
        failed(app, signals.request_finished.name, e)
    return response


def _group(app: Flask, request: Request, grouping: Grouping) -> str:
    """The route label of a per-request grouping; ``_OTHER`` if the user's function raises."""
    try:
        return labels.text(grouping.of_request(request))
    except Exception as e:
        failed(app, signals.request_started.name, e)
        return labels.OTHER


def _started(app: Flask, ctx: RequestContext) -> Start | None:
    """The request's start; noted late if ``request_started`` missed it.

    Our ``request_started`` receiver is skipped when another receiver of that
    signal raises first (blinker stops at the first exception), or when the
    request failed before dispatch; the request must still be counted (its
    duration then starts late). A late start is not counted in flight:
    nothing would balance it.
    """
    found = ctx.request.environ.get(START_KEY, MISSING)
    if found is MISSING:
        return _begin(app, ctx, False)
    if found is None or found is DONE or found is STREAMING:
        return None
    return t.cast(Start, found)


def on_request_started(sender: Flask, **extra: object) -> None:
    try:
        ctx = current_context()
        request = ctx.request
        environ = request.environ
        state: State = sender.extensions[EXTENSION_KEY]
        # One lookup for what _begin works out, and the in-flight count. The
        # key is State.route's, inline.
        found = state.routes.get(
            (id(request.url_rule), request.method, request.scheme, request.root_path)
        )
        began = perf_counter()
        tracing = state.tracing
        exclude = state.exclude_path
        if (
            found is None
            or (tracing is not None and began >= tracing.idle_until)
            or (exclude is not None and exclude.fullmatch(request.path))
            or (state.excluded_urls is not None and state.excluded_urls.url_disabled(request.url))
        ):
            _begin(sender, ctx, True, began)
            return
        next(found.group.started)
        if found.views is not None:
            begin_views(sender, ctx, found.views, began)
        # make_start, inline: no call on the common path.
        start = Start()
        start.began = began
        start.route = found
        start.traced = None
        start.ctx = ctx
        environ[START_KEY] = start
    except Exception as e:
        failed(sender, signals.request_started.name, e)


def on_request_finished(sender: Flask, response: Response, **extra: object) -> None:
    try:
        # Sent again with the 500 when one of its receivers raised: the last
        # one is what the server sends. What it says is read once, at teardown.
        environ = current_context().request.environ
        environ[RESPONSE_KEY] = response
        if type(response.response) is not list:
            # Maybe a stream, whose body may be produced before teardown
            # (Flask 3.0 with stream_with_context): note when it was ready.
            environ[READY_KEY] = perf_counter()
    except Exception as e:
        failed(sender, signals.request_finished.name, e)


def on_got_request_exception(sender: Flask, exception: BaseException, **extra: object) -> None:
    try:
        ctx = current_context()
        start = _started(sender, ctx)
        if start is not None:
            ctx.request.environ[ERROR_KEY] = exception
            state: State = sender.extensions[EXTENSION_KEY]
            assert state.metrics is not None
            key = (start.route.method, start.route.route, labels.exception_name(exception))
            state.metrics.exceptions.child(key).inc()
        # The exception left the view: a render still open is one it escaped
        # from. Ended now, the error page is not nested in it.
        end_renders()
    except Exception as e:
        failed(sender, signals.got_request_exception.name, e)


def on_request_tearing_down(
    sender: Flask, exc: BaseException | None = None, **extra: object
) -> None:
    """Record the request, once: Flask 3.1 tears a streamed request down twice.

    The fast path: one step when the request was started here without a
    span, no error was noted and no exception passed, and its response is a
    buffered body whose status already has a bound recorder for the route
    (:func:`.recording.record` binds one after recording such a request the
    whole way). Then it records exactly what :func:`tear_down` would: the
    same series, duration, request size and body size, and the view metrics.
    tests/receivers/test_recording.py::test_repeated_requests_are_recorded_as_the_first
    proves it over every shape of request, counting which way each went.
    Everything else goes the whole way, :func:`tear_down`.
    """
    try:
        ctx = current_context()
        environ = ctx.request.environ
        start = environ.get(START_KEY)
        # The common case in one call: a request started here, without a span,
        # error or exception, whose buffered body has a status and method
        # recorded in full before (its recorder). Everything else: tear_down.
        if type(start) is Start and start.ctx is ctx and start.traced is None and exc is None:
            response = environ.get(RESPONSE_KEY)
            if response is not None and ERROR_KEY not in environ:
                body = response.response
                if type(body) is list:
                    recorder = start.route.recorders.get(status_code(response))
                    if recorder is not None:
                        environ[START_KEY] = DONE
                        duration = perf_counter() - start.began
                        # request_size's common case and body_size, inline:
                        # no call on the common path.
                        if environ.get("CONTENT_LENGTH") in EMPTY and (
                            "HTTP_TRANSFER_ENCODING" not in environ
                        ):
                            request_size: int | None = 0
                        else:
                            request_size = request_body_size(environ)
                        size = len(body[0]) if len(body) == 1 else sum(map(len, body))
                        recorder.add(duration, request_size, size)
                        if VIEWS_KEY in environ:
                            end_views(sender, ctx, environ)
                        return
        tear_down(sender, ctx, environ, exc)
    except Exception as e:
        failed(sender, signals.request_tearing_down.name, e)


def tear_down(
    app: Flask, ctx: RequestContext, environ: dict[str, t.Any], exc: BaseException | None
) -> None:
    """The teardown, the whole way."""
    if exc is not None and type(exc) is GeneratorExit:
        exc = None  # Flask 3.0: the server closed a stream unread; not the app's error
    if VIEWS_KEY in environ:
        end_views(app, ctx, environ)
    start = environ.get(START_KEY, MISSING)
    if start is MISSING:
        if RESPONSE_KEY not in environ:
            # Neither started, nor answered, nor failed (each would have
            # noted it): a context pushed outside a request, such as
            # test_request_context() for url_for in a job. Not a request,
            # but a render of its that raised is over.
            end_renders(owner=id(ctx))
            return
        start = _started(app, ctx)
    elif start is STREAMING:
        # The second teardown of a stream_with_context body: it ended,
        # maybe raising (not a copied context's, popped meanwhile).
        if exc is not None and environ.get(STREAM_CONTEXT) == id(ctx):
            environ[ERROR_KEY] = exc
        return
    if start is None:
        return  # excluded stays None: a streamed template renders after teardown
    if start is DONE or start.ctx is not ctx:
        # A copy of the request's context (copy_current_request_context,
        # for a thread or greenlet) popped with the same environ: the
        # request itself is not over (or was recorded), but a render of
        # the copy's that raised is.
        end_renders(owner=id(ctx))
        return
    environ[START_KEY] = DONE
    response: Response | None = environ.get(RESPONSE_KEY)
    size: int | None
    if response is None:
        # request_finished was never sent: the exception propagated
        # (testing/debug mode) and the server answers 500.
        status, size = 500, None
    else:
        status, body = response.status_code, response.response
        if status in NO_BODY or environ.get("REQUEST_METHOD") == "HEAD":
            size = 0  # the server sends no body, whatever the response holds
        elif type(body) is list:  # a buffered body: its bytes are the truth
            # The shape on_request_tearing_down records in one step.
            record(app, environ, start, response, status, body_size(body), exc, one_step=True)
            return
        else:
            # An iterable of declared length (an error page, a file) is
            # recorded now; sending it is the server's business.
            size = response.content_length
            if size is None and not response.direct_passthrough:
                defer_to_close(app, environ, start, response, exc)
                return
            # With direct_passthrough (send_file of an open file) the
            # server gets the file's wrapper and closes that, never the
            # response: recorded now, its size unknown.
    record(app, environ, start, response, status, size, exc)
