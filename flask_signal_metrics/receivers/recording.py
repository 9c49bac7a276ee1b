"""Recording a finished request: its metrics, and the end of its span and contexts."""

from __future__ import annotations

import typing as t

from flask import signals

from .. import labels
from ..metrics.names import Observation
from ..state import EXTENSION_KEY
from ..tracing.meters import Finished
from ..tracing.spans import instrumented_elsewhere
from ..tracing.spans import ServerSpan
from ..tracing.spans import Tracing
from .environ import CONTRIB_SPAN_KEY
from .environ import ERROR_KEY
from .environ import perf_counter
from .environ import request_body_size
from .environ import Start
from .failures import call_hook
from .templates import end_renders
from .templates import release_renders

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Request
    from flask import Response

    from ..metrics.catalogue import Metrics
    from ..state import State
    from ..tracing.spans import Traced

TEARDOWN = signals.request_tearing_down.name

#: A bound on the statuses of one route recorded in one call: a view may
#: return any number.
MAX_RECORDERS = 32


def record(
    app: Flask,
    environ: dict[str, t.Any],
    start: Start,
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
    traced, found = start.traced, start.route
    method, route, recorders = found.method, found.route, found.recorders
    duration = perf_counter() - start.began
    exception = environ.get(ERROR_KEY) or exc
    error = "" if exception is None and status < 500 else labels.error_type(status, exception)
    status_label = str(status)
    request_size = request_body_size(environ)
    state: State = app.extensions[EXTENSION_KEY]
    exemplar = span = None
    if traced is not None:
        span = traced.span if isinstance(traced, ServerSpan) else environ.get(CONTRIB_SPAN_KEY)
        if span is not None:
            exemplar = Tracing.sampled_ids(span)
    metrics: Metrics = state.metrics  # type: ignore[assignment]  # set while connected
    try:
        key = (method, route, status_label, found.scheme, error)
        observed = Observation(duration, request_size, response_size, exemplar)
        metrics.requests.record(key, found.group, observed)
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
            and len(recorders) < MAX_RECORDERS
        ):
            # The next such request of this route is recorded in one call
            # (on_request_tearing_down), unless its series overflowed.
            recorder = metrics.requests.recorder(key, found.group)
            if recorder is not None:
                recorders[status] = recorder
        # Last: an SDK view or processor that raises costs nothing recorded above.
        if state.meters is not None and not instrumented_elsewhere(app):
            finished = Finished(
                method=method,
                scheme=found.scheme,
                route=route_template(state, start.ctx.request, route),
                status=status,
                error=error,
                environ=environ,
                duration=duration,
                request_size=request_size,
                response_size=response_size,
            )
            state.meters.finished(finished, span if exemplar is not None else None)
    finally:
        if traced is not None:
            # After the metrics: a span processor of the user's that raises
            # cannot cost the request its metrics; and whatever recording
            # did, nothing of the request stays current, and its span ends.
            try:
                end_context(traced, released)
            finally:
                if isinstance(traced, ServerSpan) and response is not None:
                    hook = state.settings.response_hook
                    if hook is not None:
                        # A copy of the headers: the response was sent already.
                        headers = response.headers.to_wsgi_list()
                        call_hook(app, TEARDOWN, hook, traced.made, response.status, headers)
                if isinstance(traced, ServerSpan) and traced.span is not None:
                    # The span ends when the recorded duration does.
                    end_ns = traced.start_ns + int(duration * 1e9)
                    state.tracing.finish(  # type: ignore[union-attr]  # traced came from it
                        traced.span, status, error, exception, response, end_ns, traced.server
                    )


def route_template(state: State, request: Request, label: str) -> str:
    """``http.route``: the rule's template with the application root, whatever the
    route label's grouping (prometheus-flask-exporter's ``group_by``) made of it."""
    if state.settings.group_by.name == "route":
        return label  # the label is the template
    rule = request.url_rule
    return "" if rule is None else request.root_path + rule.rule


def release_context(traced: Traced) -> None:
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
    release_renders()
    if isinstance(traced, ServerSpan):
        Tracing.detach(traced)


def end_context(traced: Traced, released: bool) -> None:
    """When the request is over: end what the request made current.

    Renders whose template raised never sent template_rendered: their spans
    end here, as failed, innermost first, so that each context token is
    reset in order and the request's own parent context is current again.

    :param released: the request's context was released already.
    """
    try:
        end_renders()
    finally:
        if isinstance(traced, ServerSpan) and not released:
            Tracing.detach(traced)
