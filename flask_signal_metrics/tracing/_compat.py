"""The only code touching private names of OpenTelemetry and opentelemetry-instrumentation-flask.

Each is read here, with the public way to fall back on when it has moved;
tests/tracing/test_compat.py fails when one of them changes underneath.
"""

from __future__ import annotations

import os
import re
import typing as t

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if t.TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.propagators.textmap import TextMapPropagator

#: The API module's namespace, and the key of the global tracer provider in it
#: (None until ``trace.set_tracer_provider``). Read by subscription on the
#: request path, where a call would cost: see :func:`global_provider`.
TRACE_GLOBALS: dict[str, t.Any] = vars(trace)
PROVIDER_KEY = "_TRACER_PROVIDER"

#: Whether :data:`PROVIDER_KEY` may be read instead of ``trace.get_tracer_provider()``.
#: Not when a provider is to be loaded from ``OTEL_PYTHON_TRACER_PROVIDER``
#: (the API function loads it; the variable stays None), nor when it moved.
READS_PROVIDER = PROVIDER_KEY in TRACE_GLOBALS and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ


def global_provider() -> trace.TracerProvider | None:
    """The global tracer provider as :data:`TRACE_GLOBALS` holds it, None while none is set.

    ``trace.get_tracer_provider()``, the public way, tests ``os.environ`` on
    every call while none is set; set by ``trace.set_tracer_provider`` or not
    at all, the variable says the same. Where it cannot be read, the public
    way's answer.
    """
    if READS_PROVIDER:
        return t.cast("trace.TracerProvider | None", TRACE_GLOBALS[PROVIDER_KEY])
    return trace.get_tracer_provider()


def traceparent_pattern() -> re.Pattern[str] | None:
    """The W3C propagator's own pattern for a ``traceparent`` value; None if it moved.

    Without it, a ``traceparent`` is left to the propagator's public ``extract()``.
    """
    found = getattr(TraceContextTextMapPropagator, "_TRACEPARENT_HEADER_FORMAT_RE", None)
    return found if isinstance(found, re.Pattern) else None


def composite_members(textmap: TextMapPropagator) -> list[TextMapPropagator] | None:
    """The propagators a composite one runs, in order; None when they cannot be read.

    None makes the caller treat the propagator as one of the user's: its
    public ``extract()`` decides.
    """
    found = getattr(textmap, "_propagators", None)
    return list(found) if isinstance(found, (list, tuple)) else None


#: The attribute opentelemetry-instrumentation-flask sets (True) on an app it
#: instruments. Read with ``getattr(app, INSTRUMENTED_FLAG, False)`` on the
#: request path; :func:`instrumented_by_opentelemetry` is that read.
INSTRUMENTED_FLAG = "_is_instrumented_by_opentelemetry"


def instrumented_by_opentelemetry(app: Flask) -> bool:
    """Whether opentelemetry-instrumentation-flask makes ``app``'s server spans.

    It has no public way to ask; should the flag move, this says False, and
    both libraries would make a server span.
    """
    return bool(getattr(app, INSTRUMENTED_FLAG, False))


def resolved_meter_provider(provider: object) -> object:
    """The provider ``provider``'s instruments record to: the one the API's stand-in forwards to.

    ``metrics.get_meter_provider()`` returns a stand-in until an SDK sets a
    provider, and the stand-in's instruments then move to that provider's
    meters; the API has no public way to ask which. Any other provider, a
    stand-in not yet set, or one whose attribute moved: itself (apps on a
    stand-in are then counted apart from apps on the provider it became).
    """
    real = getattr(provider, "_real_meter_provider", None)
    return provider if real is None else real


# The semantic conventions' names still in their incubating module (the
# ``_incubating`` package), with the values they have there as the fallback.
try:
    from opentelemetry.semconv._incubating.metrics import http_metrics as _incubating_http

    HTTP_SERVER_ACTIVE_REQUESTS: str = _incubating_http.HTTP_SERVER_ACTIVE_REQUESTS
    HTTP_SERVER_REQUEST_BODY_SIZE: str = _incubating_http.HTTP_SERVER_REQUEST_BODY_SIZE
    HTTP_SERVER_RESPONSE_BODY_SIZE: str = _incubating_http.HTTP_SERVER_RESPONSE_BODY_SIZE
except ImportError:  # pragma: no cover - moved or made stable
    HTTP_SERVER_ACTIVE_REQUESTS = "http.server.active_requests"
    HTTP_SERVER_REQUEST_BODY_SIZE = "http.server.request.body.size"
    HTTP_SERVER_RESPONSE_BODY_SIZE = "http.server.response.body.size"
