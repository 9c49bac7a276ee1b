"""What ``init_app`` makes from an app's validated settings, and checks first.

The extension's metrics, spans and meters are built here, and the checks that
must pass before the app is changed are made here; nothing here changes the
app (that is :mod:`.extension`'s).
"""

from __future__ import annotations

import os
import re
import typing as t

import click
from flask.helpers import get_debug_flag
from werkzeug.serving import is_running_from_reloader

from . import config
from .metrics.catalogue import Metrics
from .metrics.names import ClassicNames
from .multiprocess.directory import multiprocess
from .state import logger
from .tracing import spans as tracing
from .tracing.meters import ServerMeters
from .version import VERSION

if t.TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

T = t.TypeVar("T")


def check_latency(settings: config.Settings) -> None:
    if multiprocess() and settings.latency == "summary":
        raise ValueError(
            "SIGNAL_METRICS_LATENCY is 'summary', but several worker processes share"
            " their request durations as histograms: keep 'histogram' (its _count and"
            " _sum series are the summary's, under the same names)."
        )


def classic_names(settings: config.Settings) -> ClassicNames:
    return ClassicNames.make(settings.prefix, settings.group_by.label)


def export(metrics: Metrics, settings: config.Settings) -> None:
    metrics.export_defaults(
        classic_names(settings), settings.latency == "summary", settings.buckets
    )


def shared_registry_guard(make: t.Callable[..., T], *args: t.Any, **kwargs: t.Any) -> T:
    """Create metrics in a registry; a clear error if it already holds them."""
    try:
        return make(*args, **kwargs)
    except ValueError as e:
        if "Duplicated timeseries" not in str(e):
            raise
        raise ValueError(
            "The registry given to SignalMetrics already holds its metrics"
            " (is it shared with another app or extension?); give each its own"
            " registry, or leave registry= unset."
        ) from e


def make_tracing(
    settings: config.Settings, provider: TracerProvider | None
) -> tracing.Tracing | None:
    if not settings.tracing:
        return None

    capture = tracing.Capture(  # header names match whatever their case
        request=config.alternation(settings.capture_request_headers, re.IGNORECASE),
        response=config.alternation(settings.capture_response_headers, re.IGNORECASE),
        sanitize=config.alternation(settings.sanitize_headers, re.IGNORECASE),
    )
    return tracing.Tracing(provider, VERSION, capture, old_names=settings.http_dup)


def make_meters(
    settings: config.Settings, provider: MeterProvider | None, metrics: Metrics
) -> ServerMeters | None:
    if provider is None:
        return None
    # Read through ``metrics``: exporting the defaults replaces its request metrics.
    return ServerMeters(provider, VERSION, settings.buckets, metrics.in_flight, settings.http_dup)


def serves_requests() -> bool:
    """Whether this process will serve the app's requests, for SIGNAL_METRICS_PORT.

    Under the ``flask`` command every command loads the app: ``flask run``
    with the reloader twice (a watcher, and the child that serves, marked by
    ``WERKZEUG_RUN_MAIN``), and ``flask shell``, ``flask routes`` or a
    migration while the app may be running with the port. Only the process
    that serves opens it.
    """
    if os.environ.get("FLASK_RUN_FROM_CLI") != "true" or is_running_from_reloader():
        return True
    command = click.get_current_context(silent=True)
    if command is None:
        return True  # a process a flask command started (it inherits the variable)
    if command.info_name != "run":
        logger.info(
            "flask-signal-metrics: SIGNAL_METRICS_PORT is not opened by this flask"
            " command, which serves no request (only `flask run` opens it)."
        )
        return False
    reload = command.params.get("reload")
    if reload is None:  # flask run's own default: the reloader in debug mode
        reload = get_debug_flag()
    return not reload  # with the reloader, this is the watcher; its child serves


def check_route_free(app: Flask, path: str, ignored: str | None = None) -> None:
    """Refuse a path the app routes (but to ``ignored``, an endpoint about to go)."""
    for rule in app.url_map.iter_rules():
        if rule.rule == path and rule.endpoint != ignored:
            raise ValueError(
                f"SIGNAL_METRICS_PATH is {path!r}, but the app already routes it"
                f" to {rule.endpoint!r}; set SIGNAL_METRICS_PATH to a free path,"
                " or to None to register no route."
            )
