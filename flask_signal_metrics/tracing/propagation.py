"""A request's parent context, from its headers, by the global propagator."""

from __future__ import annotations

import typing as t

from opentelemetry import propagate
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import _compat

if t.TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator


class EnvironGetter(Getter[dict[str, t.Any]]):
    """Reads propagation headers straight from the WSGI environ.

    The API's default getter over ``request.headers`` pays a case-folding
    lookup and an ``isinstance`` against a typing ABC per field; the environ
    is what ``request.headers`` reads, so the values are the same.
    """

    _keys: t.ClassVar[dict[str, str]] = {}

    def get(self, carrier: dict[str, t.Any], key: str) -> list[str] | None:
        name = self._keys.get(key)
        if name is None:
            name = self._keys.setdefault(key, "HTTP_" + key.upper().replace("-", "_"))
        value = carrier.get(name)
        return None if value is None else [value]

    def keys(self, carrier: dict[str, t.Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


_GETTER = EnvironGetter()

#: The API's own pattern for a ``traceparent`` value (None if it moved).
_TRACEPARENT = _compat.traceparent_pattern()
_ZERO_TRACE_ID, _ZERO_SPAN_ID = "0" * 32, "0" * 16
_FLAGS = tuple(TraceFlags(n) for n in range(256))
_ROOT = Context()


def is_default_textmap(textmap: TextMapPropagator) -> bool:
    """Whether ``textmap`` is the API's default: W3C trace context, then W3C baggage."""
    if _TRACEPARENT is None or type(textmap) is not CompositePropagator:
        return False
    members = _compat.composite_members(textmap)
    return members is not None and [type(p) for p in members] == [
        TraceContextTextMapPropagator,
        W3CBaggagePropagator,
    ]


#: The global propagator last seen, and whether it is the API's default (one
#: tuple, so that a thread never reads one's propagator with the other's answer).
_textmap_seen: tuple[t.Any, bool] = (None, False)


def extract_parent(environ: dict[str, t.Any]) -> Context:
    """The parent context of a request, by the globally configured propagator.

    Fast path. Invariant: when that propagator is the API's default
    (``OTEL_PROPAGATORS`` unset or ``tracecontext,baggage``) and the request
    has no ``tracestate`` or ``baggage`` header, the ``traceparent`` alone
    decides the context; it is parsed here, with the API's own pattern and
    rules, into the context the propagator would give. Any other propagator,
    and any request with the other two headers, goes to the propagator
    itself. tests/tracing/test_propagation.py
    (``test_own_traceparent_parsing_gives_the_propagators_context``) compares
    the two on each rule of the header.
    """
    global _textmap_seen
    textmap = propagate.get_global_textmap()
    seen, default = _textmap_seen
    if textmap is not seen:  # the first request, or set_global_textmap since
        default = is_default_textmap(textmap)
        _textmap_seen = (textmap, default)
    if not default or "HTTP_TRACESTATE" in environ or "HTTP_BAGGAGE" in environ:
        return textmap.extract(environ, getter=_GETTER)
    header = environ.get("HTTP_TRACEPARENT")
    if not header:
        return _ROOT
    match = _TRACEPARENT.search(header)  # type: ignore[union-attr]  # default says set
    if match is None:
        return _ROOT
    version, trace_id, span_id, flags, rest = match.groups()
    if (
        trace_id == _ZERO_TRACE_ID
        or span_id == _ZERO_SPAN_ID
        or version == "ff"
        or (version == "00" and rest)
    ):
        return _ROOT
    remote = trace.SpanContext(int(trace_id, 16), int(span_id, 16), True, _FLAGS[int(flags, 16)])
    return trace.set_span_in_context(trace.NonRecordingSpan(remote), _ROOT)


try:  # opentelemetry-instrumentation's, where the contrib instrumentations read it
    from opentelemetry.instrumentation import propagators as _response
except ImportError:  # not installed: nobody can have set one
    _response = None  # type: ignore[assignment]


def response_propagator() -> t.Any:
    """The global response propagator, None when none is set (or none can be)."""
    if _response is None:
        return None
    return _response.get_global_response_propagator()  # type: ignore[no-untyped-call]


def inject_response(span: trace.Span, headers: t.Any) -> None:
    """Add the response propagator's headers (``traceresponse``) for ``span``, if one is set.

    ``set_global_response_propagator`` is the user's request to change every
    response: it is the one change the spans make to one.
    """
    propagator = response_propagator()
    if propagator is not None:
        propagator.inject(headers, trace.set_span_in_context(span), setter=_SETTER)


class ResponseHeaderSetter:
    """Sets a response header once: a value the response holds already is replaced.

    The API's ``DictHeaderSetter`` appends to it, which on a response object
    the view reuses (a module-level ``Response``) would pile up a value per
    request. A comma list (``Access-Control-Expose-Headers``) gets the name
    added when it lacks it.
    """

    def set(self, carrier: t.Any, key: str, value: str) -> None:
        if key.lower() == "access-control-expose-headers":
            listed = [v.strip() for v in carrier.get(key, "").split(",") if v.strip()]
            if value.lower() not in (v.lower() for v in listed):
                carrier[key] = ", ".join([*listed, value])
            return
        carrier[key] = value


_SETTER = ResponseHeaderSetter()
