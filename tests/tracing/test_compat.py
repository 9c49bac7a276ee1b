"""OpenTelemetry's private names the tracing shim reads: each fails here when it moves.

Each of the first tests fails when a release of the API or of
opentelemetry-instrumentation-flask drops or changes the name; the code then
still works (the public fallback, proven equal by the test after it), only
slower or, for the instrumentation's flag, with duplicate server spans.
"""

from __future__ import annotations

import re
import typing as t

import pytest
from flask import Flask
from opentelemetry import propagate
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util._once import Once

from flask_signal_metrics.tracing import _compat
from flask_signal_metrics.tracing import propagation
from flask_signal_metrics.tracing.propagation import EnvironGetter
from flask_signal_metrics.tracing.propagation import extract_parent

from .conftest import PARENT_ID
from .conftest import TRACE_ID
from .conftest import TRACEPARENT


def test_the_global_provider_is_the_api_modules_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails when ``trace.set_tracer_provider`` stops writing ``trace._TRACER_PROVIDER``."""
    assert _compat.PROVIDER_KEY in vars(trace), "opentelemetry.trace._TRACER_PROVIDER moved"
    assert _compat.READS_PROVIDER
    # A fresh "set once" guard and no provider: set_tracer_provider may run (undone after).
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    assert _compat.TRACE_GLOBALS[_compat.PROVIDER_KEY] is None
    provider = TracerProvider()
    trace.set_tracer_provider(provider)
    assert _compat.TRACE_GLOBALS[_compat.PROVIDER_KEY] is provider


@pytest.mark.parametrize("set_one", [False, True], ids=["none-set", "set"])
def test_the_global_provider_read_means_what_the_public_way_says(
    monkeypatch: pytest.MonkeyPatch, set_one: bool
) -> None:
    provider = TracerProvider() if set_one else None
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # set_tracer_provider, undone
    public = trace.get_tracer_provider()
    if provider is None:
        assert _compat.global_provider() is None
        assert isinstance(public, trace.ProxyTracerProvider)  # what Tracing takes None for
    else:
        assert _compat.global_provider() is public is provider
    monkeypatch.setattr(_compat, "READS_PROVIDER", False)
    assert _compat.global_provider() is public


def test_the_w3c_propagator_has_its_traceparent_pattern() -> None:
    """Fails when the W3C propagator's ``_TRACEPARENT_HEADER_FORMAT_RE`` moves or changes."""
    pattern = _compat.traceparent_pattern()
    assert isinstance(pattern, re.Pattern), "_TRACEPARENT_HEADER_FORMAT_RE moved"
    assert pattern is TraceContextTextMapPropagator._TRACEPARENT_HEADER_FORMAT_RE
    match = pattern.search(f"00-{TRACE_ID}-{PARENT_ID}-01-future")
    assert match is not None
    assert match.groups() == ("00", TRACE_ID, PARENT_ID, "01", "-future")
    plain = pattern.search(TRACEPARENT)
    assert plain is not None and not plain.group(5)  # nothing after the flags: version 00


def test_a_composite_propagator_lists_its_propagators() -> None:
    """Fails when ``CompositePropagator._propagators`` moves: the default is then not seen."""
    default = propagate.get_global_textmap()
    members = _compat.composite_members(default)
    assert members is not None, "CompositePropagator._propagators moved"
    assert [type(p) for p in members] == [TraceContextTextMapPropagator, W3CBaggagePropagator]
    first, second = TraceContextTextMapPropagator(), W3CBaggagePropagator()
    assert _compat.composite_members(CompositePropagator([first, second])) == [first, second]
    assert propagation.is_default_textmap(default)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_TRACEPARENT": TRACEPARENT},
        {"HTTP_TRACEPARENT": f"00-{TRACE_ID}-{PARENT_ID}-00"},
        {"HTTP_TRACEPARENT": f"ff-{TRACE_ID}-{PARENT_ID}-01"},
        {"HTTP_TRACEPARENT": "garbage"},
    ],
    ids=lambda headers: repr(headers)[:60],
)
@pytest.mark.parametrize("moved", ["pattern", "propagators"])
def test_without_the_private_names_the_propagator_gives_the_same_parent(
    monkeypatch: pytest.MonkeyPatch, headers: dict[str, str], moved: str
) -> None:
    environ = {"REQUEST_METHOD": "GET", **headers}
    fast = extract_parent(environ)
    if moved == "pattern":
        monkeypatch.setattr(propagation, "_TRACEPARENT", None)
    else:
        monkeypatch.setattr(_compat, "composite_members", lambda textmap: None)
    monkeypatch.setattr(propagation, "_textmap_seen", (None, False))  # looked at again
    assert not propagation.is_default_textmap(propagate.get_global_textmap())
    fallback = extract_parent(environ)
    assert (
        trace.get_current_span(fast).get_span_context()
        == trace.get_current_span(fallback).get_span_context()
        == trace.get_current_span(
            propagate.extract(environ, getter=EnvironGetter())
        ).get_span_context()
    )


def test_opentelemetry_instrumentation_flask_flags_the_apps_it_instruments() -> None:
    """Fails when opentelemetry-instrumentation-flask stops setting its flag on the app."""
    app = Flask(__name__)
    assert not _compat.instrumented_by_opentelemetry(app)  # the fallback: not instrumented
    FlaskInstrumentor().instrument_app(app)  # type: ignore[no-untyped-call]
    try:
        assert getattr(app, _compat.INSTRUMENTED_FLAG) is True, "the flag moved"
        assert _compat.instrumented_by_opentelemetry(app)
    finally:
        FlaskInstrumentor().uninstrument_app(app)  # type: ignore[no-untyped-call]
    assert not _compat.instrumented_by_opentelemetry(app)


def test_the_incubating_http_metric_names_are_the_fallbacks() -> None:
    """Fails when ``opentelemetry.semconv._incubating`` drops (or renames) the three names."""
    from opentelemetry.semconv._incubating.metrics import http_metrics

    names: dict[str, t.Any] = {
        "HTTP_SERVER_ACTIVE_REQUESTS": "http.server.active_requests",
        "HTTP_SERVER_REQUEST_BODY_SIZE": "http.server.request.body.size",
        "HTTP_SERVER_RESPONSE_BODY_SIZE": "http.server.response.body.size",
    }
    for name, fallback in names.items():
        assert getattr(http_metrics, name) == fallback
        assert getattr(_compat, name) == fallback


def test_the_meter_providers_stand_in_forwards_to_the_provider_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fails when the API's stand-in meter provider stops naming the provider it forwards
    to: apps set up on it and on that provider would then each have an
    ``http.server.active_requests`` instrument, and the SDK keeps only the first one's
    callbacks."""
    from opentelemetry import metrics
    from opentelemetry.metrics import _internal as metrics_internal
    from opentelemetry.sdk.metrics import MeterProvider

    # Fresh globals, as opentelemetry-test-utils' reset_metrics_globals() makes them.
    monkeypatch.delenv("OTEL_PYTHON_METER_PROVIDER", raising=False)
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", None)
    monkeypatch.setattr(
        metrics_internal, "_PROXY_METER_PROVIDER", type(metrics.get_meter_provider())()
    )
    stand_in = metrics.get_meter_provider()
    assert _compat.resolved_meter_provider(stand_in) is stand_in  # not set yet: itself
    provider = MeterProvider(shutdown_on_exit=False)
    metrics.set_meter_provider(provider)
    assert _compat.resolved_meter_provider(stand_in) is provider, "the stand-in's name moved"
    assert _compat.resolved_meter_provider(provider) is provider
    provider.shutdown()
