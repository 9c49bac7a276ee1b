"""A request's parent context: :mod:`flask_signal_metrics.tracing.propagation`."""

from __future__ import annotations

import typing as t

import pytest
from opentelemetry import baggage
from opentelemetry import propagate
from opentelemetry import trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from flask_signal_metrics.tracing.propagation import EnvironGetter
from flask_signal_metrics.tracing.propagation import extract_parent

from ..conftest import Traced
from .conftest import PARENT_ID
from .conftest import TRACE_ID
from .conftest import TRACEPARENT


def test_parent_from_traceparent_and_baggage_current_in_view(traced: Traced) -> None:
    seen: dict[str, t.Any] = {}

    @traced.app.get("/nested")
    def nested() -> str:
        seen["baggage"] = baggage.get_baggage("tenant")
        with traced.provider.get_tracer("app").start_as_current_span("query"):
            pass
        return "ok"

    headers = {"traceparent": TRACEPARENT, "baggage": "tenant=acme"}
    assert traced.client.get("/nested", headers=headers).status_code == 200
    (server,) = traced.spans()
    (child,) = traced.spans(SpanKind.INTERNAL)
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.parent.is_remote
    assert child.parent is not None and child.parent.span_id == server.context.span_id
    assert seen["baggage"] == "acme"
    # After the request, the context before it is current again.
    assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_TRACEPARENT": TRACEPARENT},
        {"HTTP_TRACEPARENT": f"00-{TRACE_ID}-{PARENT_ID}-00"},
        {"HTTP_TRACEPARENT": f"00-{TRACE_ID}-{PARENT_ID}-ff"},
        {"HTTP_TRACEPARENT": f" \t00-{TRACE_ID}-{PARENT_ID}-01\t "},
        {"HTTP_TRACEPARENT": f"00-{TRACE_ID.upper()}-{PARENT_ID}-01"},
        {"HTTP_TRACEPARENT": f"00-{'0' * 32}-{PARENT_ID}-01"},
        {"HTTP_TRACEPARENT": f"00-{TRACE_ID}-{'0' * 16}-01"},
        {"HTTP_TRACEPARENT": f"ff-{TRACE_ID}-{PARENT_ID}-01"},
        {"HTTP_TRACEPARENT": f"00-{TRACE_ID}-{PARENT_ID}-01-future"},
        {"HTTP_TRACEPARENT": f"cc-{TRACE_ID}-{PARENT_ID}-01-future"},
        {"HTTP_TRACEPARENT": f"00-{TRACE_ID}-{PARENT_ID}-1"},
        {"HTTP_TRACEPARENT": f"00-{TRACE_ID}-{PARENT_ID}"},
        {"HTTP_TRACEPARENT": f"00_{TRACE_ID}_{PARENT_ID}_01"},
        {"HTTP_TRACEPARENT": ""},
        {"HTTP_TRACEPARENT": "garbage"},
        {"HTTP_TRACEPARENT": TRACEPARENT, "HTTP_TRACESTATE": "vendor=a,other=b"},
        {"HTTP_TRACEPARENT": TRACEPARENT, "HTTP_TRACESTATE": "=bad="},
        {"HTTP_TRACEPARENT": TRACEPARENT, "HTTP_BAGGAGE": "tenant=acme"},
        {"HTTP_BAGGAGE": "tenant=acme"},
    ],
    ids=lambda headers: repr(headers)[:60],
)
def test_own_traceparent_parsing_gives_the_propagators_context(headers: dict[str, str]) -> None:
    # The fast path (the API's default propagator, no tracestate or baggage)
    # and the propagator itself must agree on every rule of the header.
    assert propagate.get_global_textmap().fields == {"traceparent", "tracestate", "baggage"}
    environ = {"REQUEST_METHOD": "GET", **headers}
    ours = extract_parent(environ)
    theirs = propagate.extract(environ, getter=EnvironGetter())
    assert (
        trace.get_current_span(ours).get_span_context()
        == trace.get_current_span(theirs).get_span_context()
    )
    assert baggage.get_all(ours) == baggage.get_all(theirs)
    assert ours.keys() == theirs.keys()  # nothing else set, nothing missing


class _UpperCaseTraceContext(TraceContextTextMapPropagator):
    """A propagator of the user's: accepts what the W3C one refuses (uppercase hex)."""

    def extract(self, carrier: t.Any, context: t.Any = None, getter: t.Any = None) -> t.Any:
        (value,) = getter.get(carrier, "traceparent") or [""]
        return super().extract({"traceparent": value.lower()}, context)


@pytest.mark.parametrize(
    "textmap",
    [_UpperCaseTraceContext(), CompositePropagator([_UpperCaseTraceContext()])],
    ids=["alone", "composite"],
)
def test_a_propagator_of_the_users_decides_the_parent(
    traced: Traced, textmap: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", textmap)  # set_global_textmap, undone
    assert propagate.get_global_textmap() is textmap
    headers = {"traceparent": f"00-{TRACE_ID.upper()}-{PARENT_ID.upper()}-01"}
    traced.client.get("/item/1", headers=headers)
    traced.client.get("/item/2", headers={"traceparent": TRACEPARENT})
    first, second = traced.spans()
    for span in (first, second):
        assert f"{span.context.trace_id:032x}" == TRACE_ID
        assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_ID
