"""The view metrics of a request: gauges up at its start, every metric at its teardown.

Each metric's recording is on its own: a label function of the user's that
raises costs that metric this request, counted as a receiver failure of the
signal it ran in, never the request or the other metrics.
"""

from __future__ import annotations

import typing as t

from flask import signals

from ..state import VIEWS_KEY
from ..views import Viewed
from .environ import perf_counter
from .environ import RESPONSE_KEY
from .failures import failed

if t.TYPE_CHECKING:
    from flask import Flask
    from flask.ctx import RequestContext

    from ..state import ViewSet
    from ..views import ViewMetric


def begin_views(app: Flask, ctx: RequestContext, views: ViewSet, began: float) -> None:
    """Note the request's view metrics and count its gauges up."""
    viewed = Viewed(began, views, True, ctx)
    ctx.request.environ[VIEWS_KEY] = viewed
    for metric in views.gauges:
        try:
            viewed.gauges.append(metric.enter())
        except Exception as e:
            failed(app, signals.request_started.name, e)


def end_views(app: Flask, ctx: RequestContext, environ: dict[str, t.Any]) -> None:
    """At the request's (first) teardown: record its view metrics, once.

    A view metric's duration is the request's, from ``request_started`` to
    its teardown (for a streamed body: until its response object, as the
    view's return); a decorated function's, its call's.
    Label functions that take the response get the one sent, or a bare 500
    when the exception propagated and none was made.
    """
    viewed = environ.get(VIEWS_KEY)
    if type(viewed) is not Viewed or viewed.ctx is not ctx:
        return
    # The request is over: no cycle through its environ keeps it for the
    # garbage collector, and a second teardown (a stream's) records nothing.
    viewed.ctx = None
    if not viewed.recorded:
        return
    viewed.recorded = False
    duration = max(perf_counter() - viewed.began, 0.0)
    response = environ.get(RESPONSE_KEY)
    if response is None:
        response = app.response_class(status=500)
    name = signals.request_tearing_down.name
    for gauge in viewed.gauges:
        try:
            gauge.dec()
        except Exception as e:
            failed(app, name, e)
    for metric in viewed.views.timed:
        _observe(app, name, metric, duration, response)
    for call in viewed.calls:
        _observe(app, name, call.metric, call.duration, response)


def _observe(app: Flask, signal: str, metric: ViewMetric, took: float, response: object) -> None:
    try:
        metric.observe(took, response)
    except Exception as e:
        failed(app, signal, e)
