"""opentelemetry-instrumentation-flask's instrumentor, on SignalMetrics.

Moving from opentelemetry-instrumentation-flask is a change of package: with
``flask-signal-metrics[instrument]`` installed, ``opentelemetry-instrument``
finds :class:`SignalMetricsInstrumentor` by its entry point
(``flask_signal_metrics``) and instruments every app; in code::

    from flask_signal_metrics.compat.opentelemetry import SignalMetricsInstrumentor

    SignalMetricsInstrumentor().instrument_app(app)

Each method maps its arguments onto the extension's options: the spans and
metrics are made by the same receivers as ``SignalMetrics(app)``'s. The
deliberate differences are listed in the docs' migration guide.
"""

from __future__ import annotations

import collections.abc as cabc
import logging
import typing as t
import weakref

import flask
from flask import Flask
from opentelemetry import metrics
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import config
from ..extension import SignalMetrics
from ..state import EXTENSION_KEY

logger = logging.getLogger("flask_signal_metrics")

#: What the instrumentor instruments (the entry point's dependency check).
INSTRUMENTS = ("flask >= 3.0",)

#: The extension of each app instrumented here, for uninstrument_app.
_EXTENSIONS: weakref.WeakKeyDictionary[Flask, SignalMetrics] = weakref.WeakKeyDictionary()


def _options(function: str, arguments: cabc.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The extension's options for opentelemetry-instrumentation-flask's arguments.

    :raises TypeError, ValueError: an argument we do not take, naming the alternative.
    """
    options = dict(arguments)
    commenter = options.pop("enable_commenter", None)
    options.pop("commenter_options", None)  # means nothing with the commenter off
    if commenter:
        raise ValueError(
            f"{function}(enable_commenter=, commenter_options=): the SQL commenter is not"
            " supported; set enable_commenter (and commenter_options) on the database"
            " instrumentation instead (opentelemetry-instrumentation-sqlalchemy,"
            " -psycopg, -dbapi), whose comments carry the trace context of the request's"
            " span."
        )
    if options.get("meter_provider") is None:
        # As FlaskInstrumentor: the global provider, through the API's stand-in
        # until an SDK sets one (in code, often after instrumenting).
        options["meter_provider"] = metrics.get_meter_provider()
    return options


class SignalMetricsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """An instrumentor for Flask, as opentelemetry-instrumentation-flask's ``FlaskInstrumentor``.

    :meth:`instrument` makes every app created afterwards instrumented
    (``flask.Flask`` is replaced by a subclass, as ``FlaskInstrumentor``
    does); :meth:`instrument_app` instruments one app. Both take
    ``request_hook``, ``response_hook``, ``tracer_provider`` and
    ``excluded_urls`` with ``FlaskInstrumentor``'s meaning, and any option
    of :class:`~flask_signal_metrics.SignalMetrics`.
    """

    _original_flask: type[Flask] | None = None
    _instrumented_flask: type[Flask] | None = None

    def instrumentation_dependencies(self) -> cabc.Collection[str]:
        return INSTRUMENTS

    def _instrument(self, **kwargs: t.Any) -> None:
        options = _options("instrument", kwargs)
        # No route under instrument(): it would come before the app's own
        # routes and could shadow one the app adds later at the same path.
        options.setdefault("path", None)
        # Validated now, the standard variables too, not at the first app.
        config.load({}, {k: v for k, v in options.items() if k in config.OPTIONS})
        SignalMetrics(**options)
        original = flask.Flask

        class InstrumentedFlask(original):  # type: ignore[valid-type,misc]
            def __init__(self, *args: t.Any, **kw: t.Any) -> None:
                super().__init__(*args, **kw)
                _instrument(self, options)

        InstrumentedFlask.__name__ = InstrumentedFlask.__qualname__ = original.__name__
        InstrumentedFlask.__module__ = original.__module__
        self._original_flask = original
        self._instrumented_flask = InstrumentedFlask
        flask.Flask = InstrumentedFlask  # type: ignore[misc]

    def _uninstrument(self, **kwargs: t.Any) -> None:
        original, ours = self._original_flask, self._instrumented_flask
        self._original_flask = self._instrumented_flask = None
        if original is None:
            return
        if flask.Flask is ours:
            flask.Flask = original  # type: ignore[misc]
        else:
            # Another instrumentor replaced it after us: putting ours back would
            # undo theirs; apps made from now on may stay instrumented by ours.
            logger.warning(
                "flask-signal-metrics: flask.Flask was replaced after"
                " SignalMetricsInstrumentor.instrument() (by %r); it is left as it is.",
                flask.Flask,
            )

    @staticmethod
    def instrument_app(
        app: Flask,
        request_hook: t.Callable[..., t.Any] | None = None,
        response_hook: t.Callable[..., t.Any] | None = None,
        tracer_provider: t.Any = None,
        excluded_urls: str | None = None,
        enable_commenter: bool | None = None,
        commenter_options: dict[str, t.Any] | None = None,
        meter_provider: t.Any = None,
        **options: t.Any,
    ) -> None:
        """Instrument ``app``: ``SignalMetrics(app, ...)`` with these options.

        An app this instrumentor instrumented already is left as it is, with a
        warning. On an app ``FlaskInstrumentor`` instruments, its spans stay the
        only ones (ours makes none) and only its OpenTelemetry metrics are recorded.
        """
        given = {
            "request_hook": request_hook,
            "response_hook": response_hook,
            "tracer_provider": tracer_provider,
            "excluded_urls": excluded_urls,
            "enable_commenter": enable_commenter,
            "commenter_options": commenter_options,
            "meter_provider": meter_provider,
        }
        arguments = {k: v for k, v in given.items() if v is not None}
        _instrument(app, _options("instrument_app", {**arguments, **options}))

    @staticmethod
    def uninstrument_app(app: Flask) -> None:
        """Undo :meth:`instrument_app`: every receiver disconnected, the route it added removed."""
        extension = _EXTENSIONS.pop(app, None)
        state = app.extensions.get(EXTENSION_KEY)
        if extension is None or state is None or not state.instrumented:
            # Never instrumented here, or the app's own set-up replaced ours: left alone.
            logger.warning("Attempting to uninstrument Flask app while already uninstrumented")
            return
        extension.remove_app(app)


def _instrument(app: Flask, options: cabc.Mapping[str, t.Any]) -> None:
    if EXTENSION_KEY in app.extensions:
        logger.warning("Attempting to instrument Flask app while already instrumented")
        return
    _EXTENSIONS[app] = SignalMetrics(app, **options)
    state = app.extensions[EXTENSION_KEY]
    state.instrumented = True
