"""Per-app state, kept at ``app.extensions["signal_metrics"]``.

The receivers are shared by every app in the process; everything that differs
between apps (settings, registry, metrics, exclusions) lives here, looked up
from the signal's sender.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import logging
import types
import typing as t
import weakref

from . import labels
from .config import Matcher
from .config import Settings
from .metrics.catalogue import Metrics
from .tracing.spans import Tracing

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Request
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector
    from werkzeug.routing import Rule

    from .tracing.meters import ServerMeters
    from .tracing.urls import UrlFilter
    from .views import ViewMetric

EXTENSION_KEY = "signal_metrics"

#: The WSGI environ key of a request's start, written by the
#: ``request_started`` receiver: its start record; None if the request is
#: excluded; a done mark once recorded. Read by declared signals too, to
#: skip excluded requests.
START_KEY = "flask_signal_metrics.start"

#: The WSGI environ key of a request's view metrics (a ``views.Viewed``),
#: written by the ``request_started`` receiver when its view has any.
VIEWS_KEY = "flask_signal_metrics.views"

#: Set to True on a view function by :func:`flask_signal_metrics.exclude`.
EXCLUDE_ATTR = "_signal_metrics_exclude"

#: The attribute of a view function listing the metrics declared on it
#: (``views.MetricDecorator``), innermost first; ``functools.wraps``
#: carries it to outer decorators.
VIEWS_ATTR = "_signal_metrics_views"

#: Set to True on a view by ``exclude_all``: no metric records its requests.
EXCLUDE_ALL_ATTR = "_signal_metrics_exclude_all"

#: The endpoint name of the metrics view.
ENDPOINT = "signal_metrics.metrics"

logger = logging.getLogger("flask_signal_metrics")


class Lane:
    """The labels of one request method and scheme, and their in-flight group."""

    __slots__ = ("group", "method", "scheme")

    def __init__(self, method: str, scheme: str, group: t.Any) -> None:
        self.method = method
        self.scheme = scheme
        self.group = group


class ViewSet(t.NamedTuple):
    """A rule's view metrics, split once: its gauges count up at the start, the rest
    record at the end (``metrics`` is all of them, for the decorators' wrappers)."""

    metrics: tuple[ViewMetric, ...]
    gauges: tuple[ViewMetric, ...]
    timed: tuple[ViewMetric, ...]

    @classmethod
    def of(cls, metrics: cabc.Iterable[ViewMetric]) -> ViewSet | None:
        """The set of ``metrics``, each once; None for none."""
        found = tuple(dict.fromkeys(metrics))  # a metric both declared and registered: once
        if not found:
            return None
        gauges = tuple(m for m in found if m.kind == "gauge")
        return cls(found, gauges, tuple(m for m in found if m.kind != "gauge"))


#: The view metrics of a request without any (a decorated helper's calls only).
NO_VIEWS = ViewSet((), (), ())


def view_metrics(view: object) -> tuple[ViewMetric, ...]:
    """The metrics declared on a view function (none when it has none)."""
    found = getattr(view, VIEWS_ATTR, ())
    return found if type(found) is tuple else ()


class RuleInfo(t.NamedTuple):
    """What every request of one URL rule shares, worked out at its first request."""

    #: The route label (the rule's template, or its grouping's per-rule value),
    #: without the application root.
    route: str
    #: The view is excluded from the request metrics and spans (``exclude``).
    excluded: bool
    #: The view metrics of its requests: declared on the view, then those
    #: registered for every view; None for none.
    views: ViewSet | None
    #: No metric records its requests, its view metrics included (``exclude_all``).
    excluded_all: bool


class Route:
    """The requests of one route, method and scheme: their labels and recorders.

    ``group`` is the in-flight group, or None for a request not counted in
    flight (started late). ``recorders`` maps a status to its series'
    recorder, filled as statuses are first recorded in full, for the
    requests :mod:`~flask_signal_metrics.receivers` record in one call.
    Read on every request: slots, whose reads cost what a tuple's index does.
    """

    __slots__ = ("group", "method", "recorders", "route", "scheme", "views")

    def __init__(
        self,
        lane: Lane,
        route: str,
        group: t.Any,
        recorders: cabc.Mapping[int, t.Any],
        views: ViewSet | None = None,
    ) -> None:
        self.method = lane.method
        self.scheme = lane.scheme
        self.route = route
        self.group = group
        self.recorders = recorders
        #: The view metrics its requests record (:mod:`.receivers.views`).
        self.views = views


#: The recorders of a route not kept in :attr:`State.routes`: none, ever.
NO_RECORDERS: cabc.Mapping[int, t.Any] = types.MappingProxyType({})

#: (id of the URL rule, the request's method, scheme and root path). The
#: request's, not the environ's: a request class may change them (a method
#: override header, say).
RouteKey = tuple[int, str, str, str]


#: A bound on :attr:`State.routes`: its keys hold the request's root path,
#: which a proxy may take from a header.
MAX_ROUTES = 1024


@dataclasses.dataclass(eq=False)
class State:
    """What one app's extension knows; built once in ``init_app``."""

    settings: Settings
    metrics: Metrics | None
    #: What ``/metrics`` serves: the extension's registry, and the default one.
    collectors: tuple[Collector, ...]
    #: SIGNAL_METRICS_EXCLUDE as one compiled alternation, or None.
    exclude_path: Matcher | None
    methods: dict[str, str]
    #: id(url rule) -> (route template, view excluded?). Filled on first sight
    #: of each rule, which lets views be decorated after ``init_app``; rules
    #: live as long as the app, so their ids are stable.
    rules: dict[int, RuleInfo] = dataclasses.field(default_factory=dict)
    #: (signal, exception type, file, line) of failures already logged.
    logged_failures: set[tuple[str, str, str, int]] = dataclasses.field(default_factory=set)
    #: Names of the app's own signals declared on the extension (shared list).
    declared: list[str] = dataclasses.field(default_factory=list)
    #: The paths the metrics are served on (SIGNAL_METRICS_PATH, ``register_endpoint``).
    metrics_paths: set[str] = dataclasses.field(default_factory=set)
    #: The separate-port metrics server (SIGNAL_METRICS_PORT), if started.
    server: t.Any = None
    #: The app's spans; None when SIGNAL_METRICS_TRACING is false.
    tracing: Tracing | None = None
    #: The extension's own registries (request metrics, declared signals):
    #: what OTLP export sends, without the process-wide default registry.
    owned: tuple[CollectorRegistry, ...] = ()
    #: (request.method, request.scheme) -> its :class:`Lane`: one dict lookup
    #: on the request path instead of three. Only known methods and schemes
    #: are kept, so it stays small.
    lanes: dict[tuple[str, str], Lane] = dataclasses.field(default_factory=dict)
    #: :data:`RouteKey` -> the requests' :class:`Route`: what
    #: ``request_started`` would work out for such a request, looked up in
    #: one step (its path is still matched against SIGNAL_METRICS_EXCLUDE).
    #: Only requests of a matched route and known method and scheme are
    #: kept, at most :data:`MAX_ROUTES` of them.
    routes: dict[RouteKey, Route] = dataclasses.field(default_factory=dict)
    #: Template name -> its duration series' ``observe``, for names whose
    #: series is its own (the family's cap bounds them; the overflow series
    #: is looked up each time, which counts the overflow).
    renders: dict[str | None, t.Callable[[float], None]] = dataclasses.field(default_factory=dict)
    #: View metrics registered for every view of this app (``register_default(app=)``).
    default_views: list[ViewMetric] = dataclasses.field(default_factory=list)
    #: View metrics registered for every view of every app of the extension (shared list).
    shared_views: list[ViewMetric] = dataclasses.field(default_factory=list)

    #: SIGNAL_METRICS_EXCLUDED_URLS (or its OTEL_PYTHON_* variables), or None.
    excluded_urls: UrlFilter | None = None
    #: The HTTP server metrics of ``meter_provider=``, or None.
    meters: ServerMeters | None = None
    #: Every request goes the whole way (meters to record): no route is kept
    #: for the one-step paths.
    whole_way: bool = False

    #: Set up by ``SignalMetricsInstrumentor`` (auto-instrumentation): the
    #: app's own ``init_app`` replaces it.
    instrumented: bool = False

    #: Counts :meth:`forget_routes`: what a request worked out before one is not kept.
    generation: int = 0

    def forget_routes(self) -> None:
        """Drop what was worked out per rule and route: the view metrics or the
        request metrics changed (``register_default``, ``export_defaults``)."""
        self.generation += 1
        self.rules.clear()
        self.routes.clear()
        self.lanes.clear()

    def rule_info(self, app: Flask, rule: Rule) -> RuleInfo:
        """The route template of ``rule`` and whether its view is excluded.

        This is half of the one exclusion rule: a request is not measured when
        its view is marked with :func:`exclude` (the ``/metrics`` view is), or
        when its path (``request.path``: no script root, no query string)
        fully matches a SIGNAL_METRICS_EXCLUDE pattern (:attr:`exclude_path`).
        The metrics declared on an excluded view still record (they were asked
        for by name), unless it is marked with ``exclude_all``.
        """
        generation = self.generation
        view = app.view_functions.get(rule.endpoint)
        grouping = self.settings.group_by
        views = None
        if rule.endpoint != ENDPOINT:
            views = ViewSet.of((*view_metrics(view), *self.shared_views, *self.default_views))
        info = RuleInfo(
            grouping.of_rule(rule) if grouping.per_rule else rule.rule,
            bool(getattr(view, EXCLUDE_ATTR, False)),
            views,
            bool(getattr(view, EXCLUDE_ALL_ATTR, False)),
        )
        if generation == self.generation:  # else it may be stale: worked out again next time
            self.rules[id(rule)] = info
        return info

    def lane(self, method: str, scheme: str) -> Lane:
        """The labels of a request's method and scheme, and its in-flight group."""
        method_label = self.methods.get(method, labels.OTHER)
        scheme_label = labels.SCHEMES.get(scheme, labels.OTHER)
        assert self.metrics is not None  # no receivers are connected without it
        generation = self.generation
        group = self.metrics.requests.group(method_label, scheme_label)
        lane = Lane(method_label, scheme_label, group)
        if method_label == method and scheme_label == scheme and generation == self.generation:
            self.lanes[(method, scheme)] = lane
        return lane

    def route(
        self,
        rule: Rule | None,
        request: Request,
        lane: Lane,
        route: str,
        kept: bool = True,
        views: ViewSet | None = None,
    ) -> Route:
        """The :class:`Route` of a request that starts in flight; kept when it can be.

        :param kept: whether the route may be kept: not when its label is the
            request's own (a per-request grouping).
        :param views: the view metrics of its requests.
        """
        key = (id(rule), request.method, request.scheme, request.root_path)
        found = self.routes.get(key)
        if found is not None:
            return found
        if (
            kept
            and not self.whole_way
            and rule is not None
            and self.lanes.get(key[1:3]) is lane
            and len(self.routes) < MAX_ROUTES
        ):
            found = self.routes[key] = Route(lane, route, lane.group, {}, views)
            return found
        return Route(lane, route, lane.group, NO_RECORDERS, views)

    def render_observer(self, name: str | None) -> t.Callable[[float], None]:
        """What records a render of template ``name``; kept in :attr:`renders` when it can be."""
        assert self.metrics is not None  # no receivers are connected without it
        family = self.metrics.template_duration
        key = (labels.template(name),)
        observe = family.child(key).observe
        if family.kept(key) is not None:
            self.renders[name] = observe
        return observe


#: Every enabled app's state in this process, for the OTLP metrics bridge.
INSTANCES: weakref.WeakSet[State] = weakref.WeakSet()


def get_state(app: Flask) -> State:
    """The app's state; a clear error when the extension was never set up on it."""
    try:
        return t.cast(State, app.extensions[EXTENSION_KEY])
    except KeyError:
        raise RuntimeError(
            f"SignalMetrics is not initialised on app {app.name!r}; call"
            " SignalMetrics(app) or ext.init_app(app) first."
        ) from None


V = t.TypeVar("V", bound=t.Callable[..., t.Any])


def exclude(view: V) -> V:
    """Mark a view so that its requests are not measured.

    .. code-block:: python

        @app.get("/healthz")
        @exclude
        def healthz() -> str:
            return "ok"

    Works on views registered before or after ``init_app``.
    """
    setattr(view, EXCLUDE_ATTR, True)
    return view
