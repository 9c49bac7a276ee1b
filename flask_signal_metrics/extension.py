"""The ``SignalMetrics`` extension: the only module that changes the app."""

from __future__ import annotations

import typing as t

from blinker import ANY

from . import _compat
from . import building
from . import cli
from . import config
from . import declared
from . import exposition
from . import labels
from . import port_server
from . import receivers
from . import views
from .labels import text as label_text
from .metrics.catalogue import AlreadyExported as AlreadyExported
from .metrics.catalogue import Metrics
from .metrics.registry import default_registry
from .metrics.registry import new_registry
from .metrics.render import render as render_metrics
from .metrics.store import SignalStore
from .multiprocess.directory import check_directory
from .multiprocess.directory import multiprocess
from .port_server import start_metrics_server as start_metrics_server
from .port_server import worker_exited as worker_exited
from .state import ENDPOINT
from .state import exclude
from .state import EXTENSION_KEY
from .state import get_state
from .state import INSTANCES
from .state import logger
from .state import State
from .tracing import urls
from .version import VERSION

if t.TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry
    from werkzeug.routing import Rule

F = t.TypeVar("F", bound=t.Callable[..., t.Any])


class SignalMetrics:
    """Prometheus metrics for a Flask app, recorded by receivers of Flask's signals.

    .. code-block:: python

        app = Flask(__name__)
        SignalMetrics(app)

        # or, in an app factory
        signal_metrics = SignalMetrics()

        def create_app() -> Flask:
            app = Flask(__name__)
            signal_metrics.init_app(app)
            return app

    :param app: the app to set up now; omit it to call :meth:`init_app` later.
    :param registry: where the extension's metrics are created. By default
        each app gets a new registry of its own, so several apps (or tests) in
        one process never clash.
    :param options: override ``SIGNAL_METRICS_*`` config keys, named by the
        key's suffix in lower case: ``path="/internal/metrics"``,
        ``naming="classic"``, ``buckets=[...]``, ``exclude=[...]``,
        ``labels={...}``, ``max_series=...``, ``enabled=...``,
        ``size_buckets=[...]``, ``serve_default_registry=...``.

    The extension keeps no reference to any app: all per-app state lives in
    ``app.extensions["signal_metrics"]``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        **options: t.Any,
    ) -> None:
        unknown = sorted(set(options) - set(config.OPTIONS))
        if unknown:
            raise TypeError(
                f"SignalMetrics got unknown option(s) {', '.join(unknown)}; the"
                " options are: registry, tracer_provider, meter_provider,"
                f" {', '.join(sorted(config.OPTIONS))}."
            )
        if tracer_provider is not None and not hasattr(tracer_provider, "get_tracer"):
            raise TypeError(
                "tracer_provider must be an OpenTelemetry TracerProvider (such as"
                f" opentelemetry.sdk.trace.TracerProvider()), or None for the global one;"
                f" got {tracer_provider!r}."
            )
        if meter_provider is not None and not hasattr(meter_provider, "get_meter"):
            raise TypeError(
                "meter_provider must be an OpenTelemetry MeterProvider (such as"
                " opentelemetry.sdk.metrics.MeterProvider(...)), or None for Prometheus"
                f" only; got {meter_provider!r}."
            )
        self._registry = registry
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._options = options
        # Options are validated here too: a bad one fails where it is written.
        given = config.load({}, options, environ={})
        max_series = given.max_series
        #: The static labels of the view metrics: those of the options.
        self._static = given.labels
        #: View metrics registered for every view of every app (register_default).
        self._default_views: list[views.ViewMetric] = []
        #: Metrics of the app's own signals, for every app of this extension.
        self._store = building.shared_registry_guard(
            SignalStore,
            registry if registry is not None else new_registry(),
            max_series,
        )
        self._declared: list[str] = []
        #: Whether an app's config capped the declared metrics (the first app's does).
        self._capped = "max_series" in options
        if app is not None:
            self.init_app(app)

    @property
    def registry(self) -> CollectorRegistry:
        """Where the metrics declared on the extension are (views', the app's own
        signals'): ``registry=`` if given, else a registry of the extension's own."""
        return self._store.registry

    def init_app(self, app: Flask) -> None:
        """Validate the app's config, create its metrics, connect the receivers
        and register the metrics route.

        Everything is validated before the app is changed, so a bad value
        leaves the app as it was.

        :raises TypeError, ValueError: a config key or option has a bad value;
            the message names the key and the fix.
        :raises RuntimeError: the extension is already set up on this app, or
            the app has handled a request and a metrics path is to be routed.
        """
        found = app.extensions.get(EXTENSION_KEY)
        # The app's own set-up wins over the instrumentor's defaults: replaced
        # once everything is validated, so that a bad value leaves it as it was.
        replacing = found is not None and found.instrumented
        if found is not None and not replacing:
            raise RuntimeError(
                f"SignalMetrics is already initialised on app {app.name!r}; call"
                " init_app once per app."
            )
        settings = config.load(app.config, self._options)
        if not settings.enabled:
            if replacing:
                self._replace(app)
            app.extensions[EXTENSION_KEY] = State(settings, None, (), None, {})
            return
        if settings.path is not None:
            building.check_route_free(app, settings.path, ENDPOINT if replacing else None)
            if _compat.handled_a_request(app):
                raise RuntimeError(
                    f"SignalMetrics is set up on app {app.name!r} after it handled a request,"
                    " when Flask takes no more routes; set it up before the first request,"
                    " or set SIGNAL_METRICS_PATH to None (and serve the metrics on"
                    " SIGNAL_METRICS_PORT)."
                )
        if settings.port is not None and multiprocess():
            raise ValueError(
                "SIGNAL_METRICS_PORT is set, but several worker processes cannot all"
                " listen on it; start one server for the process group instead: call"
                " flask_signal_metrics.start_metrics_server(port) in gunicorn's when_ready"
                " hook (see examples/gunicorn.conf.py), and unset SIGNAL_METRICS_PORT."
            )
        building.check_latency(settings)
        if multiprocess():
            check_directory()  # once: a scrape or a compaction never checks
        if replacing:
            self._replace(app)
        registry = self._registry if self._registry is not None else new_registry()
        # A registry passed in is also the declared signals' one, and may be
        # the default one: each once, or its families would be read twice.
        owned = tuple(dict.fromkeys((registry, self._store.registry)))
        collectors: tuple[t.Any, ...] = owned
        if settings.serve_default_registry:
            collectors = tuple(dict.fromkeys((*owned, default_registry())))
        server = None
        if settings.port is not None and building.serves_requests():
            # Before anything changes: a port in use leaves the app as it was.
            server = port_server.bind_server(settings.addr, settings.port, collectors, settings)
        try:
            metrics = building.shared_registry_guard(
                Metrics,
                registry,
                naming=settings.naming,
                buckets=settings.buckets,
                size_buckets=settings.size_buckets,
                static_labels=settings.labels,
                max_series=settings.max_series,
                version=VERSION,
                signals=receivers.SIGNAL_NAMES,
                classic=building.classic_names(settings),
                summary=settings.latency == "summary",
            )
        except BaseException:
            if server is not None:
                server.server_close()
            raise
        app.extensions[EXTENSION_KEY] = state = State(
            settings=settings,
            metrics=metrics,
            collectors=collectors,
            exclude_path=config.alternation(settings.exclude),
            methods=labels.method_table(settings.known_methods),
            declared=self._declared,
            tracing=building.make_tracing(settings, self._tracer_provider),
            owned=owned,
            shared_views=self._default_views,
            excluded_urls=urls.excluded_urls(settings.excluded_urls),
            meters=building.make_meters(settings, self._meter_provider, metrics),
        )
        state.whole_way = state.meters is not None
        if settings.export_defaults:
            building.export(metrics, settings)
        INSTANCES.add(state)
        if not self._capped:
            self._capped = True
            self._store.cap(settings.max_series)
        if settings.path is not None:
            _add_route(app, state, settings.path)
        receivers.connect(app)
        app.cli.add_command(cli.group)
        if metrics.workers is not None:
            metrics.workers.start()
        if server is not None:
            state.server = port_server.serve(server)

    def _replace(self, app: Flask) -> None:
        logger.info(
            "flask-signal-metrics: app %r sets SignalMetrics up itself; the"
            " instrumentor's set-up is replaced by it.",
            app.name,
        )
        self.remove_app(app)

    def remove_app(self, app: Flask) -> None:
        """Undo :meth:`init_app`: disconnect every receiver, remove the metrics
        route and the ``signal-metrics`` commands, close the metrics port.

        The app serves as if the extension had never been set up on it;
        ``init_app`` may set it up again. What was recorded is dropped with it.

        :raises RuntimeError: the extension is not set up on this app.
        """
        state = get_state(app)
        receivers.disconnect(app)
        del app.extensions[EXTENSION_KEY]
        INSTANCES.discard(state)
        if state.metrics_paths:
            _remove_endpoint(app, ENDPOINT)
        commands = app.cli.commands
        for name in [name for name, command in commands.items() if command is cli.group]:
            del commands[name]
        if state.server is not None:
            state.server.server_close()
        if state.meters is not None:
            state.meters.close()

    def counter(
        self,
        name: str,
        documentation: str,
        labels: t.Mapping[str, object] | None = None,
        *,
        initial: bool = True,
    ) -> views.MetricDecorator:
        """A counter of a view's requests: ``@signal_metrics.counter("orders", "Orders placed")``.

        :param labels: label name -> a constant, a function of nothing (called
            in the request: ``lambda: request.view_args["kind"]``) or a function
            of the response (``lambda r: r.status_code``). The extension's static
            labels follow. Capped at ``max_series`` label sets like every metric.
        :param initial: with constant labels only, export the series at 0 now.
        :returns: a decorator for views (or any function: outside a view it
            counts the calls), also given to :meth:`register_default`.
        """
        return self._declare("counter", name, documentation, labels, initial, {})

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: t.Mapping[str, object] | None = None,
        *,
        initial: bool = True,
        buckets: t.Sequence[float] | None = None,
    ) -> views.MetricDecorator:
        """A histogram of a view's request durations (seconds); as :meth:`counter`.

        :param buckets: the bounds, strictly increasing (default: as the request metrics').
        """
        return self._declare(
            "histogram", name, documentation, labels, initial, {"buckets": buckets}
        )

    def summary(
        self,
        name: str,
        documentation: str,
        labels: t.Mapping[str, object] | None = None,
        *,
        initial: bool = True,
    ) -> views.MetricDecorator:
        """A summary (count and sum) of a view's request durations; as :meth:`counter`."""
        return self._declare("summary", name, documentation, labels, initial, {})

    def gauge(
        self,
        name: str,
        documentation: str,
        labels: t.Mapping[str, object] | None = None,
        *,
        initial: bool = True,
        multiprocess_mode: str | None = None,
    ) -> views.MetricDecorator:
        """The view's requests in progress; as :meth:`counter`.

        Label functions of the response get None (there is none yet).

        :param multiprocess_mode: prometheus_client's, for several worker
            processes (default ``"livesum"``: the live workers' sum).
        """
        options = {"multiprocess_mode": multiprocess_mode}
        return self._declare("gauge", name, documentation, labels, initial, options)

    def info(
        self, name: str, documentation: str, labels: t.Mapping[str, object] | None = None
    ) -> t.Any:
        """A gauge set to 1 with constant labels (a version, a build): the series, to ``set``."""
        pairs = [(str(k), label_text(v)) for k, v in (labels or {}).items()]
        return self._store.info(name, documentation, pairs)

    def register_default(
        self, *decorators: views.MetricDecorator, app: Flask | None = None
    ) -> None:
        """Record view metrics for every view: of ``app``, or of every app of the extension.

        Views added later, blueprints' and async ones are included; the
        metrics view is not. A view both decorated and registered records once.
        """
        for decorator in decorators:
            if not isinstance(decorator, views.MetricDecorator):
                raise TypeError(
                    "register_default() takes what counter(), histogram(), summary() and"
                    f" gauge() return; got {decorator!r}."
                )
        metrics = [d.metric for d in decorators]
        if app is None:
            self._default_views.extend(metrics)
            for state in list(INSTANCES):  # this extension's apps forget their rules
                if state.shared_views is self._default_views:
                    state.forget_routes()
            return
        state = get_state(app)
        state.default_views.extend(metrics)
        state.forget_routes()

    def export_defaults(self, app: Flask, **options: t.Any) -> None:
        """Serve the request metrics of an app set up with ``export_defaults=False``.

        :param options: ``group_by``, ``prefix``, ``latency``, ``buckets``:
            as the config keys; what was recorded before starts afresh if
            they change the metrics' shape.
        :raises AlreadyExported: the request metrics are served already.
        """
        unknown = sorted(set(options) - {"group_by", "prefix", "latency", "buckets"})
        if unknown:
            raise TypeError(
                f"export_defaults() got unknown option(s) {', '.join(unknown)}; it takes"
                " group_by, prefix, latency and buckets."
            )
        state = get_state(app)
        if state.metrics is None:
            return  # disabled: nothing to serve
        settings = config.load(app.config, {**self._options, **options})
        building.check_latency(settings)
        building.export(state.metrics, settings)
        state.settings = settings
        state.forget_routes()

    def register_endpoint(self, path: str, app: Flask) -> None:
        """Serve the metrics on ``path`` too (or only, with ``SIGNAL_METRICS_PATH=None``)."""
        state = get_state(app)
        checked = config.load_arguments("register_endpoint", {"path": path}).path
        if checked is None:
            raise ValueError("register_endpoint(path=) must be a path such as '/metrics'.")
        building.check_route_free(app, checked)
        _add_route(app, state, checked)

    def generate_metrics(
        self, app: Flask | None, accept: str | None = None, names: t.Sequence[str] | None = None
    ) -> tuple[str, str]:
        """What ``/metrics`` would answer: the text and its content type.

        :param app: whose ``/metrics``; None for the extension's own registry
            and the process's (what a worker-less server serves).
        :param accept: an ``Accept`` header (default: the Prometheus text format).
        :param names: only these metric families (``name[]`` on ``/metrics``).
        """
        if app is not None:
            state = get_state(app)
            collectors, timeout = state.collectors, state.settings.lock_timeout
        else:
            collectors = tuple(dict.fromkeys((self._store.registry, default_registry())))
            timeout = config.LOCK_TIMEOUT
        accepted = [] if not accept else [a.split(";")[0].strip() for a in accept.split(",")]
        body, content_type = render_metrics(collectors, accepted, list(names or ()), timeout)
        return body.decode(), content_type

    def _declare(
        self,
        kind: str,
        name: str,
        documentation: str,
        labels: t.Mapping[str, object] | None,
        initial: bool,
        options: dict[str, t.Any],
    ) -> views.MetricDecorator:
        given = {k: v for k, v in options.items() if v is not None}
        metric = views.declare(
            self._store, kind, name, documentation, labels, self._static, initial, given
        )
        return views.MetricDecorator(metric, self._store)

    def count(
        self,
        signal: t.Any,
        *,
        name: str | None = None,
        documentation: str | None = None,
        labels: t.Mapping[str, declared.LabelFunction] | None = None,
        allowed: t.Mapping[str, t.Collection[str]] | None = None,
        sender: t.Any = ANY,
    ) -> t.Callable[[F], F]:
        """Count the sends of one of the app's own blinker signals.

        :param signal: a blinker signal with a name (``Namespace().signal("model-saved")``).
        :param name: the metric name; default ``flask_signal_<signal name>``
            (``_total`` is added on exposition).
        :param labels: label name -> function of ``(sender, **kwargs)`` giving its value.
        :param allowed: label name -> the values it may take; others become ``_OTHER``.
            Labels without an allow-list are capped by ``max_series``.
        :param sender: count only this sender's sends (default: any sender).
        :returns: a decorator that connects a receiver of yours to the same
            signal (held strongly), so one line declares both:

            .. code-block:: python

                @signal_metrics.count(model_saved)
                def on_model_saved(sender, **extra): ...

        :raises TypeError, ValueError: a bad name, label or allow-list, naming the fix.
        """
        counted = declared.Counted(
            self._store,
            signal,
            name=name,
            documentation=documentation,
            labels=labels,
            allowed=allowed,
        )
        receivers.connect_declared(signal, counted, sender)
        self._declared.append(counted.signal_name)

        def also_connect(receiver: F) -> F:
            receivers.connect_declared(signal, receiver, sender)
            return receiver

        return also_connect

    def time(
        self,
        start: t.Any,
        end: t.Any,
        *,
        key: declared.LabelFunction,
        name: str | None = None,
        documentation: str | None = None,
        labels: t.Mapping[str, declared.LabelFunction] | None = None,
        allowed: t.Mapping[str, t.Collection[str]] | None = None,
        buckets: t.Sequence[float] | None = None,
        sender: t.Any = ANY,
    ) -> None:
        """Time the span between two of the app's signals, matched by a key.

        A send of ``start`` notes the time under ``key(sender, **kwargs)``; a
        send of ``end`` with the same key observes the duration in
        ``flask_signal_<start>_to_<end>_duration_seconds`` (or ``name``), with
        labels from the end's sender and keyword arguments. An end without a
        start, and starts still waiting when 10 000 others are, are counted in
        ``flask_signal_metrics_signal_unmatched_total{metric,reason}``.
        """
        timed = declared.Timed(
            self._store,
            start,
            end,
            key=key,
            name=name,
            documentation=documentation,
            labels=labels,
            allowed=allowed,
            buckets=buckets,
        )
        receivers.connect_declared(start, timed.on_start, sender)
        receivers.connect_declared(end, timed.on_end, sender)
        self._declared += [timed.start_name, timed.end_name]


def _add_route(app: Flask, state: State, path: str) -> None:
    """Route ``path`` to the metrics view (one view function per app, for every path)."""
    view = app.view_functions.get(ENDPOINT)
    if view is None:
        view = exposition.metrics_view
        if state.settings.decorator is not None:
            # The user's own guard (login_required, an IP check, ...); the
            # result stays excluded from the metrics whatever it copies.
            view = exclude(state.settings.decorator(view))
    app.add_url_rule(path, endpoint=ENDPOINT, view_func=view, methods=["GET"])
    state.metrics_paths.add(path)


def _remove_endpoint(app: Flask, endpoint: str) -> None:
    """Remove ``endpoint``'s rules and view: a new map holding the others.

    Werkzeug's ``Map`` has no way to remove a rule; a map built again from
    unbound copies of the rest (``Rule.empty()``), with the same settings,
    routes every other request as before.
    """
    old = app.url_map
    new = app.url_map_class(
        [_unbound(rule) for rule in old.iter_rules() if rule.endpoint != endpoint],
        default_subdomain=old.default_subdomain,
        strict_slashes=old.strict_slashes,
        merge_slashes=old.merge_slashes,
        redirect_defaults=old.redirect_defaults,
        converters=old.converters,
        sort_parameters=old.sort_parameters,
        sort_key=old.sort_key,
        host_matching=old.host_matching,
    )
    app.url_map = new
    app.view_functions.pop(endpoint, None)


#: What ``Rule.empty()`` does not copy: Flask's automatic OPTIONS answer,
#: and two of Werkzeug's own options.
_RULE_EXTRAS = ("provide_automatic_options", "merge_slashes", "websocket")


def _unbound(rule: Rule) -> Rule:
    """An unbound copy of ``rule``, with what ``Rule.empty()`` leaves out."""
    copy = rule.empty()
    for name in _RULE_EXTRAS:
        if hasattr(rule, name):
            setattr(copy, name, getattr(rule, name))
    return copy
