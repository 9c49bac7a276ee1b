"""The ``SignalMetrics`` extension: the only module that changes the app."""

from __future__ import annotations

import os
import typing as t
import warnings

from . import config
from . import exposition
from . import labels
from . import prometheus
from . import receivers
from .state import compile_exclude
from .state import EXTENSION_KEY
from .state import State

if t.TYPE_CHECKING:
    from flask import Flask
    from prometheus_client import CollectorRegistry

try:
    from importlib.metadata import version as _dist_version

    VERSION = _dist_version("flask-signal-metrics")
except Exception:  # running from a source tree that was never installed
    VERSION = "0+unknown"

_MULTIPROCESS_ENV = {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}

#: The endpoint name of the metrics view.
ENDPOINT = "signal_metrics.metrics"


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
        **options: t.Any,
    ) -> None:
        unknown = sorted(set(options) - set(config.OPTIONS))
        if unknown:
            raise TypeError(
                f"SignalMetrics got unknown option(s) {', '.join(unknown)}; the"
                f" options are: registry, {', '.join(sorted(config.OPTIONS))}."
            )
        self._registry = registry
        self._options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the app's config, create its metrics, connect the receivers
        and register the metrics route.

        Everything is validated before the app is changed, so a bad value
        leaves the app as it was.

        :raises TypeError, ValueError: a config key or option has a bad value;
            the message names the key and the fix.
        :raises RuntimeError: the extension is already set up on this app.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                f"SignalMetrics is already initialised on app {app.name!r}; call"
                " init_app once per app."
            )
        settings = config.load(app.config, self._options)
        if not settings.enabled:
            app.extensions[EXTENSION_KEY] = State(settings, None, (), None, {})
            return
        if settings.path is not None:
            _check_route_free(app, settings.path)
        if _MULTIPROCESS_ENV & os.environ.keys():
            warnings.warn(
                "PROMETHEUS_MULTIPROC_DIR is set, but flask-signal-metrics does not"
                " aggregate metrics across worker processes yet: /metrics shows the"
                " requests of the worker that answers it. Run one worker process"
                " (threads are fine) until it does.",
                RuntimeWarning,
                stacklevel=2,
            )
        registry = self._registry if self._registry is not None else prometheus.new_registry()
        try:
            metrics = prometheus.Metrics(
                registry,
                naming=settings.naming,
                buckets=settings.buckets,
                size_buckets=settings.size_buckets,
                static_labels=settings.labels,
                max_series=settings.max_series,
                version=VERSION,
                signals=receivers.SIGNAL_NAMES,
            )
        except ValueError as e:
            if "Duplicated timeseries" not in str(e):
                raise
            raise ValueError(
                "The registry given to SignalMetrics already holds its metrics"
                " (is it shared with another app?); give each app its own"
                " registry, or leave registry= unset."
            ) from e
        collectors: tuple[t.Any, ...] = (registry,)
        if settings.serve_default_registry:
            collectors += (prometheus.default_registry(),)
        app.extensions[EXTENSION_KEY] = State(
            settings=settings,
            metrics=metrics,
            collectors=collectors,
            exclude_path=compile_exclude(settings.exclude),
            methods=labels.method_table(settings.known_methods),
        )
        if settings.path is not None:
            app.add_url_rule(
                settings.path,
                endpoint=ENDPOINT,
                view_func=exposition.metrics_view,
                methods=["GET"],
            )
        receivers.connect(app)


def _check_route_free(app: Flask, path: str) -> None:
    for rule in app.url_map.iter_rules():
        if rule.rule == path:
            raise ValueError(
                f"SIGNAL_METRICS_PATH is {path!r}, but the app already routes it"
                f" to {rule.endpoint!r}; set SIGNAL_METRICS_PATH to a free path,"
                " or to None to register no route."
            )
