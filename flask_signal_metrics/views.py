"""Metrics declared on views: counters, histograms, summaries and gauges.

``counter()``, ``histogram()``, ``summary()`` and ``gauge()`` of the extension
return a :class:`MetricDecorator`. On a view it records nothing itself: it
marks the view (:data:`VIEWS_ATTR`), and the request receivers record the
metric for each of the view's requests, as they record the request metrics
(:mod:`.receivers.views`). On any other function (a helper a view calls), or
when the function is called outside a request, the wrapper records the call
itself.

A label value is a constant, a function without parameters (called in the
request, so ``flask.request`` works) or a function of one parameter, the
response (``lambda r: r.status_code``). A function that raises costs that
request its recording of the metric, never the request: it is counted in
``flask_signal_metrics_receiver_errors_total``.
"""

from __future__ import annotations

import collections.abc as cabc
import functools
import inspect
import re
import time
import typing as t

from . import _compat
from . import labels as label_values
from .config import DURATION_BUCKETS
from .config import parse_buckets
from .metrics.names import HistogramSpec
from .state import EXCLUDE_ALL_ATTR
from .state import logger
from .state import NO_VIEWS
from .state import START_KEY
from .state import view_metrics
from .state import VIEWS_ATTR
from .state import VIEWS_KEY

if t.TYPE_CHECKING:
    from flask.ctx import RequestContext

    from .metrics.family import Family
    from .metrics.store import SignalStore
    from .state import ViewSet

F = t.TypeVar("F", bound=t.Callable[..., t.Any])

KINDS = ("counter", "histogram", "summary", "gauge")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

perf_counter = time.perf_counter

_NOT_STARTED = object()


class Label(t.NamedTuple):
    """One label of a view metric: a constant, or a function and what it takes."""

    name: str
    #: The constant's text, or the function.
    value: str | t.Callable[..., object]
    #: The function takes the response.
    takes_response: bool = False


class ViewMetric:
    """One metric declared on views, and how a request records it."""

    __slots__ = ("family", "kind", "labels", "name")

    def __init__(
        self, kind: str, name: str, family: Family[t.Any], labels: tuple[Label, ...]
    ) -> None:
        self.kind = kind
        self.name = name
        self.family = family
        self.labels = labels

    def values(self, response: object) -> tuple[str, ...]:
        """The label values of one request (or call) and its response."""
        found = []
        for label in self.labels:
            value = label.value
            if isinstance(value, str):
                found.append(value)
            elif label.takes_response:
                found.append(str(value(response)))
            else:
                found.append(str(value()))
        return tuple(found)

    def observe(self, duration: float, response: object) -> None:
        """Record one finished request or call (not a gauge's: it counts down its series)."""
        child = self.family.child(self.values(response))
        if self.kind == "counter":
            child.inc()
        else:
            child.observe(duration)

    def enter(self) -> t.Any:
        """A gauge's request or call begins: its series, counted up (no response yet)."""
        child = self.family.child(self.values(None))
        child.inc()
        return child


class Call(t.NamedTuple):
    """A decorated function's call during a request, recorded at the request's end."""

    metric: ViewMetric
    duration: float


class Viewed:
    """The view metrics of one request, kept in its environ at ``VIEWS_KEY``.

    ``views``: the metrics of the request's view (the decorators' wrappers
    stay out of the way of those, ``views.metrics``); ``recorded``:
    whether they are still to be recorded (not for an excluded request, nor
    after its teardown); ``gauges``: the series of the gauges counted up at
    the start, to count down at the end; ``calls``: the metrics of decorated
    functions the request called (not its view), with each call's duration,
    recorded at its end with its response.
    """

    __slots__ = ("began", "calls", "ctx", "gauges", "recorded", "views")

    #: The mark of an excluded request (``exclude_all``, an excluded path): no
    #: metric records it, a decorated function's neither. Holds no context.
    EXCLUDED: t.ClassVar[Viewed]

    def __init__(
        self,
        began: float,
        views: ViewSet,
        recorded: bool,
        ctx: RequestContext | None,
    ) -> None:
        self.began = began
        self.views = views
        self.recorded = recorded
        #: The request's context until its end (then None).
        self.ctx: RequestContext | None = ctx
        self.gauges: list[t.Any] = []
        self.calls: list[Call] = []


Viewed.EXCLUDED = Viewed(0.0, NO_VIEWS, False, None)


def exclude_all(view: F) -> F:
    """Mark a view so that no metric records its requests, its own included.

    :func:`flask_signal_metrics.exclude` leaves the metrics declared on the
    view; this drops them too (and the span).
    """
    setattr(view, EXCLUDE_ALL_ATTR, True)
    return view


class MetricDecorator:
    """A view metric's decorator (what ``counter()`` and the others return).

    Several views may share it; ``register_default`` applies its metric to
    every view of an app.
    """

    __slots__ = ("metric", "store")

    def __init__(self, metric: ViewMetric, store: SignalStore) -> None:
        self.metric = metric
        self.store = store

    def __call__(self, function: F) -> F:
        metric, store = self.metric, self.store
        wrapper: t.Callable[..., t.Any]
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
                call = _Call.begin(metric, store)
                if call is None:
                    return await function(*args, **kwargs)
                result = None
                try:
                    result = await function(*args, **kwargs)
                    return result
                finally:
                    call.end(result)

        else:

            @functools.wraps(function)
            def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
                call = _Call.begin(metric, store)
                if call is None:
                    return function(*args, **kwargs)
                result = None
                try:
                    result = function(*args, **kwargs)
                    return result
                finally:
                    call.end(result)

        setattr(wrapper, VIEWS_ATTR, (*view_metrics(function), metric))
        return t.cast(F, wrapper)


class _Call:
    """A call of a decorated function that the receivers do not record as a view.

    Inside a request (a helper the view calls, a class-based view's method)
    its duration is noted and recorded at the request's end, with the
    request's response; outside any request it is recorded when it returns,
    label functions of the response given its result.
    """

    __slots__ = ("began", "ctx", "gauge", "metric", "store")

    def __init__(self, metric: ViewMetric, store: SignalStore, ctx: RequestContext | None) -> None:
        self.metric = metric
        self.store = store
        self.ctx = ctx
        self.gauge: t.Any = None
        if metric.kind == "gauge":
            try:
                self.gauge = metric.enter()
            except Exception as e:
                failed_call(store, metric, e)
        self.began = perf_counter()

    @classmethod
    def begin(cls, metric: ViewMetric, store: SignalStore) -> _Call | None:
        """The call's recording; None when the receivers see to it, or nothing may record it."""
        ctx = _compat.current_context.get(None)
        if ctx is not None:
            environ = ctx.request.environ
            viewed = environ.get(VIEWS_KEY)
            if type(viewed) is Viewed:
                if metric in viewed.views.metrics or not viewed.recorded:
                    return None  # the view's own metric, or an excluded (or ended) request
                ctx = viewed.ctx  # the request's own context (a copy's calls are its too)
            else:
                start = environ.get(START_KEY, _NOT_STARTED)
                if start is not None:  # None: excluded from the request metrics only
                    # The request's start record holds its own context. Without one
                    # no receiver of ours records this request (no extension, one
                    # disabled, a start missed, a body sent after the teardown):
                    # the call is recorded when it returns.
                    ctx = getattr(start, "ctx", None)
        return cls(metric, store, ctx)

    def end(self, result: object) -> None:
        metric = self.metric
        try:
            if metric.kind == "gauge":
                if self.gauge is not None:
                    self.gauge.dec()
                return
            duration = max(perf_counter() - self.began, 0.0)
            if self.ctx is None:
                metric.observe(duration, result)
                return
            environ = self.ctx.request.environ
            viewed = environ.get(VIEWS_KEY)
            if type(viewed) is not Viewed:
                viewed = environ[VIEWS_KEY] = Viewed(self.began, NO_VIEWS, True, self.ctx)
            viewed.calls.append(Call(metric, duration))
        except Exception as e:
            failed_call(self.store, metric, e)


def failed_call(store: SignalStore, metric: ViewMetric, error: Exception) -> None:
    """A view metric's recording of a plain call failed: counted, logged once per metric."""
    try:
        store.errors.labels("view_metric:" + metric.name).inc()
        logger.warning(
            "flask-signal-metrics: recording the view metric %s failed (%s: %s); the call"
            " is unaffected.",
            metric.name,
            type(error).__qualname__,
            error,
        )
    except Exception:
        pass  # nothing may escape into the call


def declare(
    store: SignalStore,
    kind: str,
    name: str,
    documentation: str,
    labels: cabc.Mapping[str, object] | None,
    static: cabc.Sequence[tuple[str, str]],
    initial: bool,
    options: cabc.Mapping[str, t.Any],
) -> ViewMetric:
    """Validate a view metric's declaration and create its family.

    :param static: the extension's static labels, added after the metric's own.
    :param initial: with constant labels only, export the series (at 0) now.
    :param options: ``buckets`` (histogram), ``multiprocess_mode`` (gauge).
    :raises TypeError, ValueError: naming the argument and the fix.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{kind}(): the name must be a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*);"
            f" got {name!r}."
        )
    if not isinstance(documentation, str):
        raise TypeError(f"{kind}({name!r}): the description must be a string.")
    allowed = {"histogram": {"buckets"}, "gauge": {"multiprocess_mode"}}.get(kind, set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"{kind}({name!r}) got unknown option(s) {', '.join(unknown)}; it takes"
            f" {', '.join(sorted(allowed)) or 'none'}."
        )
    declared = _labels(kind, name, labels)
    # The extension's static labels win over the metric's own of the same
    # name, in its place (prometheus-flask-exporter's default_labels do).
    fixed = dict(static)
    names = {label.name for label in declared}
    declared = tuple(Label(d.name, fixed[d.name]) if d.name in fixed else d for d in declared)
    declared += tuple(Label(n, v) for n, v in static if n not in names)
    labelnames = tuple(label.name for label in declared)
    family: Family[t.Any]
    if kind == "counter":
        family = store.counter(name, documentation, labelnames)
    elif kind == "histogram":
        buckets = options.get("buckets")
        bounds = (
            DURATION_BUCKETS
            if buckets is None
            else parse_buckets(f"histogram({name!r}, buckets=)", buckets)
        )
        family = store.histogram(HistogramSpec(name, documentation, labelnames, bounds))
    elif kind == "summary":
        family = store.summary(name, documentation, labelnames)
    else:
        family = store.gauge(name, documentation, labelnames, options.get("multiprocess_mode"))
    metric = ViewMetric(kind, name, family, declared)
    if initial and declared and all(isinstance(label.value, str) for label in declared):
        family.child(tuple(t.cast(str, label.value) for label in declared))
    return metric


def _labels(kind: str, name: str, labels: object) -> tuple[Label, ...]:
    if labels is None:
        return ()
    if not isinstance(labels, cabc.Mapping):
        raise TypeError(
            f"{kind}({name!r}): labels must be a dict of label name to a value, or to a"
            " function of the response or of nothing, e.g. {'status': lambda r:"
            f" r.status_code}}; got {labels!r}."
        )
    found = []
    for label, value in labels.items():
        if (
            not isinstance(label, str)
            or not _LABEL.match(label)
            or label.startswith("__")
            or label in ("le", "quantile")
        ):
            raise ValueError(
                f"{kind}({name!r}) has the label name {label!r}; use letters, digits and"
                " underscores, not starting with a digit or '__', and not 'le' or 'quantile'."
            )
        if callable(value):
            found.append(Label(label, value, _takes_response(value)))
        else:
            found.append(Label(label, label_values.text(value)))
    return tuple(found)


def _takes_response(function: t.Callable[..., object]) -> bool:
    """Whether a label function is given the response (it has a positional parameter)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False  # a builtin without a signature: called without arguments
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(
        p.kind in positional or p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    )
