"""Span attributes and redaction: :mod:`flask_signal_metrics.tracing.attributes`."""

from __future__ import annotations

import re
import typing as t

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.trace.sampling import SamplingResult
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import Link
from opentelemetry.trace import SpanKind
from opentelemetry.trace import TraceState
from opentelemetry.util.types import Attributes
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_signal_metrics import config
from flask_signal_metrics.tracing import attributes as attributes_module
from flask_signal_metrics.tracing.attributes import Capture
from flask_signal_metrics.tracing.attributes import redact_query
from flask_signal_metrics.tracing.attributes import split_host

from ..conftest import MakeTraced
from ..conftest import Traced


def test_proxy_fix_and_query_redaction(traced: Traced) -> None:
    traced.app.wsgi_app = ProxyFix(traced.app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    headers = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "shop.example:8443",
    }
    traced.client.get("/item/1?sig=abc&q=x&X-Amz-Signature=s", headers=headers)
    attributes = dict(traced.spans()[0].attributes or {})
    assert attributes["url.scheme"] == "https"
    assert attributes["server.address"] == "shop.example"
    assert attributes["server.port"] == 8443
    assert attributes["client.address"] == "203.0.113.9"
    assert attributes["url.query"] == "sig=REDACTED&q=x&X-Amz-Signature=REDACTED"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ""),
        ("q=1", "q=1"),
        ("flag", "flag"),
        ("sig=1&Sig=2", "sig=REDACTED&Sig=2"),  # keys are case-sensitive
        ("AWSAccessKeyId=k&Signature=s", "AWSAccessKeyId=REDACTED&Signature=REDACTED"),
        # Keys are compared decoded, as the app (request.args) and the contrib read them.
        ("Sig%6Eature=s&q=1", "Sig%6Eature=REDACTED&q=1"),
        ("X+Goog-Signature=s", "X+Goog-Signature=s"),
        ("X-Goog%2DSignature=s", "X-Goog%2DSignature=REDACTED"),
        ("%73ig=s", "%73ig=REDACTED"),
        ("a=%zz&sig=", "a=%zz&sig=REDACTED"),
    ],
)
def test_redact_query(query: str, expected: str) -> None:
    assert redact_query(query) == expected


_METHOD, _ORIGINAL = "http.request.method", "http.request.method_original"
_NO_HOST = {"HTTP_HOST": "", "SERVER_PORT": "8080"}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"REQUEST_METHOD": "get"}, {_METHOD: "GET", _ORIGINAL: "get"}),
        ({"REQUEST_METHOD": "GET"}, {_METHOD: "GET", _ORIGINAL: None}),
        ({**_NO_HOST, "SERVER_NAME": "::1"}, {"server.address": "::1", "server.port": 8080}),
        ({**_NO_HOST, "SERVER_NAME": "shop"}, {"server.address": "shop", "server.port": 8080}),
    ],
)
def test_attributes_from_the_raw_environ(
    traced: Traced, environ: dict[str, str], expected: dict[str, object]
) -> None:
    """A method in another case is canonical with its original; a Host-less IPv6 server."""
    traced.client.get("/item/1", environ_overrides=environ)
    (span,) = traced.spans()
    assert {key: (span.attributes or {}).get(key) for key in expected} == expected


@pytest.mark.parametrize(
    ("host", "scheme", "expected"),
    [
        ("example.com", "http", ("example.com", 80)),
        ("example.com", "https", ("example.com", 443)),
        ("example.com:8080", "http", ("example.com", 8080)),
        ("[::1]:9000", "http", ("::1", 9000)),
        ("[::1]", "https", ("::1", 443)),
    ],
)
def test_split_host(host: str, scheme: str, expected: tuple[str, int]) -> None:
    assert split_host(host, scheme) == expected


def test_captured_headers_follow_the_standard_variables(
    make_traced: MakeTraced, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "X-Request-Id,x-secret-.*"
    )
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "Content-Type")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "x-secret-.*")
    traced = make_traced()
    headers = {"X-Request-Id": "r-1", "X-Secret-Token": "hunter2", "Cookie": "a=b"}
    traced.client.get("/item/1", headers=headers)
    attributes = dict(traced.spans()[0].attributes or {})
    assert attributes["http.request.header.x-request-id"] == ("r-1",)
    assert attributes["http.request.header.x-secret-token"] == ("[REDACTED]",)
    assert "http.request.header.cookie" not in attributes
    assert attributes["http.response.header.content-type"] == ("text/html; charset=utf-8",)
    assert "hunter2" not in repr(attributes)


def test_a_sanitize_field_redacts_every_header_whose_name_contains_it(
    make_traced: MakeTraced, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``session`` redacts ``X-Session-Id``: searched for, as OpenTelemetry does."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "X-.*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "session")
    traced = make_traced()
    traced.client.get("/item/1", headers={"X-Session-Id": "secret", "X-Request-Id": "r-1"})
    attributes = dict(traced.spans()[0].attributes or {})
    assert attributes["http.request.header.x-session-id"] == ("[REDACTED]",)
    assert attributes["http.request.header.x-request-id"] == ("r-1",)
    assert "secret" not in repr(attributes)


_HEADERS = ["X-Session-Id", "Session", "X-Request-Id", "Cookie", "Set-Cookie"]


@pytest.mark.parametrize(
    ("capture", "sanitize"),
    [
        ("X-.*,Cookie,Session", "session"),
        ("X-.*,Cookie,Session", "SESSION,cookie"),
        ("x-session-id,set-cookie", "^x-"),
        ("X-Request-Id", "id$"),
        (".*", "(?:a|b)-s,(r)e(q)"),
        ("(X)-(.*)", "zzz"),
        ("Cookie", ""),
    ],
)
def test_captured_and_sanitized_headers_as_opentelemetry_util_http(
    capture: str, sanitize: str
) -> None:
    """The same headers captured and redacted as by the contrib's own functions."""
    from opentelemetry.util.http import get_custom_header_attributes

    def patterns(value: str) -> list[str]:
        return [p.strip() for p in value.split(",") if p.strip()]

    ours = Capture(
        request=config.alternation(patterns(capture), re.IGNORECASE),
        sanitize=config.alternation(patterns(sanitize), re.IGNORECASE),
    )
    assert ours.request is not None
    headers = [(name, f"value of {name}") for name in _HEADERS]
    found = ours.headers("http.request.header.", ours.request, headers)
    theirs = get_custom_header_attributes(
        dict(headers), patterns(capture), patterns(sanitize), lambda name: name
    )
    assert found  # each case captures something
    # Given the identity as its normalize function, the contrib's names are the headers'.
    assert found == {f"http.request.header.{name}": value for name, value in theirs.items()}


class _RouteSampler(Sampler):
    """Samples by the start attributes, as the conventions allow a sampler to."""

    def __init__(self) -> None:
        self.seen: list[dict[str, t.Any]] = []

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: t.Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        found = dict(attributes or {})
        self.seen.append(found)
        sampled = found.get("http.route") != "/abort"
        return SamplingResult(Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP, attributes)

    def get_description(self) -> str:
        return "RouteSampler"


def test_a_sampler_decides_on_the_start_attributes(make_traced: MakeTraced) -> None:
    sampler = _RouteSampler()
    traced = make_traced(sampler=sampler)
    traced.client.get("/item/3?q=1")
    traced.client.get("/abort")
    first, second = sampler.seen
    assert first["http.request.method"] == "GET"
    assert first["url.path"] == "/item/3"
    assert first["url.query"] == "q=1"
    assert first["http.route"] == "/item/<int:item_id>"
    assert first["server.address"] == "localhost"
    assert second["http.route"] == "/abort"
    (span,) = traced.spans()  # /abort was dropped by its attributes
    assert {k: v for k, v in (span.attributes or {}).items() if k in first} == first


@pytest.mark.parametrize(
    ("sampler", "made"),
    [(None, 1), (ALWAYS_OFF, 0), (ParentBased(TraceIdRatioBased(0.0)), 0)],
    ids=["sampled", "always-off", "ratio-zero"],
)
def test_start_attributes_are_made_only_when_read(
    make_traced: MakeTraced, monkeypatch: pytest.MonkeyPatch, sampler: Sampler | None, made: int
) -> None:
    """The SDK's samplers never read a dropped span's attributes: they are not made."""
    calls: list[str] = []
    attributes = attributes_module.request_attributes

    def counted(*args: t.Any) -> dict[str, t.Any]:
        calls.append("made")
        return attributes(*args)

    monkeypatch.setattr(attributes_module, "request_attributes", counted)
    traced = make_traced(sampler=sampler)
    assert traced.client.get("/item/1").status_code == 200
    assert len(calls) == made
    assert len(traced.spans()) == made
