"""Test-only stand-in for ``opentelemetry.instrumentation.flask``.

``FlaskInstrumentor`` is our
:class:`~flask_signal_metrics.compat.opentelemetry.SignalMetricsInstrumentor`,
nothing else. The other names are only there because the suite's files import
or patch them by name (without them a whole file, or every test of a class,
would error before running): ``context`` is OpenTelemetry's context module,
the rest are values copied from opentelemetry-instrumentation-flask 0.66b1.
Our instrumentor reads none of them, so patching them changes nothing here.
"""

from __future__ import annotations

import weakref

import flask
from opentelemetry import context as context
from opentelemetry.util.http import get_excluded_urls

from flask_signal_metrics.compat.opentelemetry import SignalMetricsInstrumentor

FlaskInstrumentor = SignalMetricsInstrumentor

# test_flask_compatibility.py imports these three.
_ENVIRON_ACTIVATION_KEY = "opentelemetry-flask.activation_key"
_ENVIRON_TOKEN = "opentelemetry-flask.token"


def _request_ctx_ref() -> weakref.ReferenceType[object]:
    """A weak reference to the current request context (Flask >= 2.2), as in the original."""
    current = flask.globals.request_ctx._get_current_object()  # type: ignore[attr-defined]
    return weakref.ref(current)


# test_programmatic.py's TestProgrammatic patches it (after setting its variable).
_excluded_urls_from_env = get_excluded_urls("FLASK")

__all__ = ["FlaskInstrumentor"]
