"""prometheus-flask-exporter's API, on :class:`~flask_signal_metrics.SignalMetrics`.

Moving from prometheus-flask-exporter is an import::

    from flask_signal_metrics.compat import PrometheusMetrics

Each class and method maps its arguments onto the extension's options and
methods: the metrics are recorded by the same receivers, under naming
``classic``, with prometheus-flask-exporter's names and labels. The few
deliberate differences are listed in the docs' migration guide.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import re
import typing as t
import warnings
import weakref

import flask

from ..extension import AlreadyExported
from ..extension import SignalMetrics
from ..extension import start_metrics_server
from ..state import exclude
from ..version import VERSION
from ..views import exclude_all

if t.TYPE_CHECKING:
    from flask import Flask

    from ..views import MetricDecorator

F = t.TypeVar("F", bound=t.Callable[..., t.Any])
P = t.TypeVar("P", bound="PrometheusMetrics")
R = t.TypeVar("R", bound="RESTfulPrometheusMetrics")

#: ``defaults_prefix=NO_PREFIX``: the default metrics' names have no prefix.
NO_PREFIX = "#no_prefix"


def _grouping(group_by: object) -> object:
    """prometheus-flask-exporter's ``group_by``: a request attribute's name, or a function."""
    if not isinstance(group_by, str) or group_by in ("path", "endpoint", "url_rule", "full_path"):
        return group_by

    def read(request: flask.Request) -> object:
        return getattr(request, group_by)

    read.__name__ = group_by  # the label is named as the attribute
    return read


def _deprecated_group_by(group_by: object, kwargs: dict[str, t.Any]) -> object:
    """``group_by``, or ``"endpoint"`` for the deprecated ``group_by_endpoint=True``."""
    if kwargs.get("group_by_endpoint") is True:
        warnings.warn(
            "group_by_endpoint= is deprecated (prometheus-flask-exporter 0.4.0):"
            " use group_by='endpoint'.",
            DeprecationWarning,
            stacklevel=3,
        )
        return "endpoint"
    return group_by or "path"


def _anchored(patterns: str | cabc.Iterable[str]) -> list[str]:
    """``excluded_paths`` are ``re.match``-ed (a prefix); ours fully match."""
    if isinstance(patterns, str):
        patterns = [patterns]
    return [_scoped(pattern) + "(?s:.*)" for pattern in patterns]


_GLOBAL_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")


def _scoped(pattern: str) -> str:
    """``(?i)/health`` → ``(?i:/health)``: flags at the start scoped to the pattern."""
    flags = _GLOBAL_FLAGS.match(pattern)
    if flags is None:
        return f"(?:{pattern})"
    return f"(?{flags.group(1)}:{pattern[flags.end() :]})"


Declaring = t.Callable[..., "MetricDecorator"]


def _declaring(kind: str) -> Declaring:
    """PFE's ``counter``/``histogram``/``summary``/``gauge``: the extension's, by its names."""

    def declare(
        self: PrometheusMetrics,
        name: str,
        description: str,
        labels: dict[str, object] | None = None,
        initial_value_when_only_static_labels: bool = True,
        **kwargs: t.Any,
    ) -> MetricDecorator:
        method: Declaring = getattr(self._ext, kind)
        return method(
            name, description, labels, initial=initial_value_when_only_static_labels, **kwargs
        )

    declare.__name__ = declare.__qualname__ = kind
    declare.__doc__ = f"A {kind} of the view's requests: ``SignalMetrics.{kind}``."
    return declare


class PrometheusMetrics:
    """prometheus-flask-exporter's ``PrometheusMetrics``, as a :class:`SignalMetrics`.

    Takes its arguments; ``registry=None`` gives the instance a registry of
    its own (prometheus-flask-exporter's default is the process's global one:
    pass ``registry=prometheus_client.REGISTRY`` for that). The app is held
    weakly (``.app``).
    """

    def __init__(
        self,
        app: Flask | None,
        path: str | None = "/metrics",
        export_defaults: bool = True,
        defaults_prefix: str = "flask",
        group_by: object = "path",
        buckets: cabc.Sequence[float] | None = None,
        default_latency_as_histogram: bool = True,
        default_labels: dict[str, object] | None = None,
        response_converter: t.Callable[..., t.Any] | None = None,
        excluded_paths: str | cabc.Iterable[str] | None = None,
        exclude_user_defaults: bool = True,
        metrics_decorator: t.Callable[..., t.Any] | None = None,
        registry: t.Any = None,
        **kwargs: t.Any,
    ) -> None:
        self.path = path
        self._export_defaults = export_defaults
        self._defaults_prefix = defaults_prefix or "flask"
        self._default_labels = default_labels or {}
        self._default_latency_as_histogram = default_latency_as_histogram
        # The receivers see the response Flask made: nothing to convert.
        self._response_converter = response_converter
        self._metrics_decorator = metrics_decorator
        self.buckets = buckets
        self.version = VERSION
        given = registry
        if kwargs.get("static_labels"):
            warnings.warn(
                "static_labels= is deprecated (prometheus-flask-exporter 0.15.0):"
                " use default_labels=.",
                DeprecationWarning,
                stacklevel=2,
            )
            for key, value in kwargs["static_labels"].items():
                self._default_labels.setdefault(key, value)
        self.group_by = _deprecated_group_by(group_by, kwargs)
        self.excluded_paths = (
            None
            if not excluded_paths
            else [
                re.compile(p)
                for p in ([excluded_paths] if isinstance(excluded_paths, str) else excluded_paths)
            ]
        )
        self.exclude_user_defaults = exclude_user_defaults
        options: dict[str, t.Any] = {
            "naming": "classic",
            "path": path,
            "export_defaults": export_defaults,
            "prefix": self._prefix(self._defaults_prefix),
            "group_by": _grouping(self.group_by),
            "latency": "histogram" if default_latency_as_histogram else "summary",
            "labels": self._default_labels,
            "exclude": _anchored(excluded_paths) if excluded_paths else (),
            "exclude_view_metrics": exclude_user_defaults,
        }
        if buckets is not None:
            options["buckets"] = buckets
        if metrics_decorator is not None:
            options["decorator"] = metrics_decorator
        # Without registry=, each app gets one of its own (several apps, or one
        # instance per test, never clash); the decorators' metrics are in .registry.
        self._ext = SignalMetrics(registry=given, **options)
        self.registry = given if given is not None else self._ext.registry
        self._app: weakref.ref[Flask] | None = None
        if app is not None:
            self.init_app(app)

    @staticmethod
    def _prefix(prefix: str) -> str:
        return "" if prefix == NO_PREFIX else prefix

    @property
    def app(self) -> Flask | None:
        """The app given to the constructor or :meth:`init_app`, if it still exists."""
        return None if self._app is None else self._app()

    @classmethod
    def for_app_factory(cls: type[P], **kwargs: t.Any) -> P:
        """An instance for an app factory: call :meth:`init_app` later."""
        return cls(app=None, **kwargs)

    def init_app(self, app: Flask) -> None:
        self._app = weakref.ref(app)
        self._ext.init_app(app)

    def _the_app(self, app: Flask | None) -> Flask:
        found = app or self.app
        return found if found is not None else flask.current_app

    def register_endpoint(self, path: str, app: Flask | None = None) -> None:
        """Serve the metrics on ``path`` of the app (registered under the reloader too)."""
        self._ext.register_endpoint(path, self._the_app(app))

    def generate_metrics(
        self, accept_header: str | None = None, names: cabc.Sequence[str] | None = None
    ) -> tuple[str, str]:
        """The exposition text and its content type, as ``/metrics`` would serve them."""
        app = self.app
        if app is None and flask.has_app_context():
            app = flask.current_app
        return self._ext.generate_metrics(app, accept_header, names)

    def start_http_server(
        self,
        port: int,
        host: str = "0.0.0.0",
        endpoint: str = "/metrics",
        ssl: dict[str, str] | None = None,
    ) -> None:
        """Serve the metrics on ``host:port`` from a daemon thread (any path answers)."""
        if ssl is not None:
            raise ValueError(
                "start_http_server(ssl=) is not supported: terminate TLS in a proxy in front"
                " of the port, or guard it with basic_auth/bearer_token of start_metrics_server."
            )
        start_metrics_server(port, host, app=self.app)

    def export_defaults(
        self,
        buckets: cabc.Sequence[float] | None = None,
        group_by: object = "path",
        latency_as_histogram: bool = True,
        prefix: str = "flask",
        app: Flask | None = None,
        **kwargs: t.Any,
    ) -> None:
        """Serve the default metrics of an instance made with ``export_defaults=False``."""
        options: dict[str, t.Any] = {
            "group_by": _grouping(_deprecated_group_by(group_by, kwargs)),
            "prefix": self._prefix(prefix or self._defaults_prefix),
            "latency": "histogram" if latency_as_histogram else "summary",
        }
        if buckets is not None:
            options["buckets"] = buckets
        # Exported already: as with prometheus-flask-exporter, nothing happens.
        with contextlib.suppress(AlreadyExported):
            self._ext.export_defaults(self._the_app(app), **options)

    def register_default(self, *metric_wrappers: MetricDecorator, **kwargs: t.Any) -> None:
        """Record these metrics for every view of the app (later views too)."""
        self._ext.register_default(*metric_wrappers, app=self._the_app(kwargs.get("app")))

    histogram = _declaring("histogram")
    summary = _declaring("summary")
    gauge = _declaring("gauge")
    counter = _declaring("counter")

    @staticmethod
    def do_not_track() -> t.Callable[[F], F]:
        """Skip the default metrics for the view; its own metrics still record."""
        return exclude

    @staticmethod
    def exclude_all_metrics() -> t.Callable[[F], F]:
        """Skip every metric for the view, its own included."""
        return exclude_all

    def info(
        self,
        name: str,
        description: str,
        labelnames: cabc.Sequence[str] | None = None,
        labelvalues: cabc.Sequence[object] | None = None,
        **labels: object,
    ) -> t.Any:
        """A gauge set to 1 with these labels; returns it (to ``set`` another value)."""
        if labels and labelnames:
            raise ValueError(
                "info() takes the labels as keyword arguments or as labelnames and"
                " labelvalues, not both."
            )
        if labelnames and labelvalues:
            labels = dict(zip(labelnames, labelvalues, strict=True))
        return self._ext.info(name, description, labels)


class RESTfulPrometheusMetrics(PrometheusMetrics):
    """For Flask-RESTful: the ``api`` is accepted (the receivers see its responses as made)."""

    def __init__(self, app: Flask | None, api: object, **kwargs: t.Any) -> None:
        self.api = api
        super().__init__(app, **kwargs)

    @classmethod
    def for_app_factory(cls: type[R], api: object = None, **kwargs: t.Any) -> R:
        return cls(app=None, api=api, **kwargs)

    def init_app(self, app: Flask, api: object = None) -> None:
        if api is not None:
            self.api = api
        super().init_app(app)


class ConnexionPrometheusMetrics(PrometheusMetrics):
    """For Connexion: takes its app (``app.app`` is the Flask app)."""

    def __init__(
        self, app: t.Any, default_mimetype: str = "application/json", **kwargs: t.Any
    ) -> None:
        self.default_mimetype = default_mimetype
        super().__init__(app.app if app else None, **kwargs)

    @staticmethod
    def content_type(content_type: str) -> t.Callable[[F], F]:
        """Accepted for compatibility: the response keeps the content type Connexion gave it."""

        def unchanged(view: F) -> F:
            return view

        return unchanged


__all__ = [
    "NO_PREFIX",
    "ConnexionPrometheusMetrics",
    "PrometheusMetrics",
    "RESTfulPrometheusMetrics",
]
