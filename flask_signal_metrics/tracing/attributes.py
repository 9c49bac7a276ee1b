"""A server span's attributes, from the WSGI environ, with secrets redacted.

Names follow the stable HTTP semantic conventions for server spans; the
attribute names are the semantic-conventions package's.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import typing as t
from urllib.parse import unquote_plus

from opentelemetry.semconv.attributes import client_attributes
from opentelemetry.semconv.attributes import http_attributes
from opentelemetry.semconv.attributes import network_attributes
from opentelemetry.semconv.attributes import server_attributes
from opentelemetry.semconv.attributes import url_attributes
from opentelemetry.semconv.attributes import user_agent_attributes

if t.TYPE_CHECKING:
    from flask import Request

    from ..config import Matcher

#: Query keys whose values become ``REDACTED``: the four the conventions and
#: opentelemetry-util-http name, and AWS Signature Version 4's counterparts.
SENSITIVE_QUERY_KEYS = frozenset(
    (
        "AWSAccessKeyId",
        "Signature",
        "sig",
        "X-Goog-Signature",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
    )
)

#: What a sanitized captured header's value becomes (as in the contrib instrumentations).
REDACTED_HEADER = "[REDACTED]"

_DEFAULT_PORTS = {"http": 80, "https": 443}

_HTTP_ROUTE = http_attributes.HTTP_ROUTE


@dataclasses.dataclass(frozen=True, slots=True)
class Capture:
    """Which headers become span attributes, from the standard variables.

    Each entry of the request and response lists is a case-insensitive
    regular expression matched against the whole header name; the value of
    a captured header whose name contains a match of a ``sanitize`` entry
    (case-insensitive, anywhere in the name: ``session`` redacts
    ``X-Session-Id``) becomes :data:`REDACTED_HEADER`. Both as
    opentelemetry-util-http's ``SanitizeValue`` does
    (tests/tracing/test_attributes.py compares them).
    """

    request: Matcher | None = None
    response: Matcher | None = None
    sanitize: Matcher | None = None

    def headers(
        self, prefix: str, pattern: Matcher, headers: cabc.Iterable[tuple[str, str]]
    ) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for name, value in headers:
            if pattern.fullmatch(name):
                if self.sanitize is not None and self.sanitize.search(name):
                    value = REDACTED_HEADER
                found.setdefault(prefix + name.lower(), []).append(value)
        return found


def request_attributes(
    capture: Capture, request: Request, method: str, route: str, old: bool = False
) -> dict[str, t.Any]:
    """The attributes known at a server span's start, read from the request's environ.

    A ``ProxyFix`` the user applied rewrote the environ (scheme, host,
    client address, script root) before Flask saw it, so it counts; the
    environ is read directly, being cheaper than the ``request`` properties.
    """
    environ = request.environ
    scheme = environ.get("wsgi.url_scheme", "http")
    attributes: dict[str, t.Any] = {
        http_attributes.HTTP_REQUEST_METHOD: method,
        url_attributes.URL_PATH: request.root_path + request.path,
        url_attributes.URL_SCHEME: scheme,
    }
    # "_OTHER" for an unknown method, and Werkzeug upper-cases a known
    # one sent in another case: either way the conventions want the original.
    original = environ.get("REQUEST_METHOD", method)
    if original != method:
        attributes[http_attributes.HTTP_REQUEST_METHOD_ORIGINAL] = original
    if route:
        attributes[_HTTP_ROUTE] = route
    query = environ.get("QUERY_STRING")
    if query:
        attributes[url_attributes.URL_QUERY] = redact_query(query)
    host, port = split_host(_host(environ), scheme)
    if host:
        attributes[server_attributes.SERVER_ADDRESS] = host
        if port is not None:
            attributes[server_attributes.SERVER_PORT] = port
    client = environ.get("REMOTE_ADDR")
    if client:
        attributes[client_attributes.CLIENT_ADDRESS] = client
    protocol = protocol_version(environ)
    if protocol:
        attributes[network_attributes.NETWORK_PROTOCOL_VERSION] = protocol
    agent = environ.get("HTTP_USER_AGENT")
    if agent:
        attributes[user_agent_attributes.USER_AGENT_ORIGINAL] = agent
    if capture.request is not None:
        attributes.update(
            capture.headers("http.request.header.", capture.request, request.headers.items())
        )
    if old:
        attributes.update(old_request_attributes(environ, host))
    return attributes


#: The old experimental name of ``http.response.status_code`` (http/dup).
OLD_STATUS_CODE = "http.status_code"


def old_request_attributes(environ: cabc.Mapping[str, t.Any], host: str) -> dict[str, t.Any]:
    """A server span's old experimental HTTP names (``OTEL_SEMCONV_STABILITY_OPT_IN=http/dup``).

    As opentelemetry-instrumentation-wsgi makes them in its default mode, for
    dashboards that still query them; ``url.query``'s redaction applies to
    ``http.target`` too.
    """
    found: dict[str, t.Any] = {
        "http.method": environ.get("REQUEST_METHOD", ""),
        "http.scheme": environ.get("wsgi.url_scheme", "http"),
    }
    if environ.get("SERVER_NAME"):
        found["http.server_name"] = environ["SERVER_NAME"]
    if environ.get("HTTP_HOST"):
        found["http.host"] = environ["HTTP_HOST"]
        found["net.host.name"] = host
    port = environ.get("SERVER_PORT", "")
    if isinstance(port, str) and port.isdigit():
        found["net.host.port"] = int(port)
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not target:
        query = environ.get("QUERY_STRING")
        target = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        target += f"?{query}" if query else ""
    path, mark, query = str(target).partition("?")
    found["http.target"] = f"{path}?{redact_query(query)}" if mark else path
    if environ.get("REMOTE_ADDR"):
        found["net.peer.ip"] = environ["REMOTE_ADDR"]
    if environ.get("REMOTE_PORT"):
        found["net.peer.port"] = str(environ["REMOTE_PORT"])
    if environ.get("HTTP_USER_AGENT"):
        found["http.user_agent"] = environ["HTTP_USER_AGENT"]
    protocol = protocol_version(environ)
    if protocol:
        found["http.flavor"] = protocol
    return found


class StartAttributes(cabc.Mapping[str, t.Any]):
    """A server span's start attributes, read from the request when first asked for.

    They are passed to ``start_span`` so that a sampler can decide on them, as
    the conventions ask; the SDK's own samplers (always on or off, trace-id
    ratio, parent based) read them only to keep them on a span they sample.
    For a span they drop nobody reads them, so they are not made: a sampler
    of the user's that reads them gets the same values, made at its first look.
    """

    __slots__ = ("_capture", "_made", "_method", "_old", "_request", "_route")

    def __init__(
        self, capture: Capture, request: Request, method: str, route: str, old: bool = False
    ) -> None:
        self._old = old
        self._capture = capture
        self._request = request
        self._method = method
        self._route = route
        self._made: dict[str, t.Any] | None = None

    def _get(self) -> dict[str, t.Any]:
        made = self._made
        if made is None:
            made = self._made = request_attributes(
                self._capture, self._request, self._method, self._route, self._old
            )
        return made

    def __getitem__(self, key: str) -> t.Any:
        return self._get()[key]

    def __iter__(self) -> t.Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def items(self) -> cabc.ItemsView[str, t.Any]:
        # The SDK copies a sampled span's attributes with items(), which the
        # Mapping default would do with a Python call per key.
        return self._get().items()


def _host(environ: dict[str, t.Any]) -> str:
    """The Host header, else the server's name and port (as Werkzeug reads them)."""
    host = environ.get("HTTP_HOST")
    if host:
        return t.cast(str, host)
    name, port = environ.get("SERVER_NAME", ""), environ.get("SERVER_PORT", "")
    if ":" in name:  # an IPv6 address, bracketed as in a Host header
        name = f"[{name}]"
    return f"{name}:{port}" if port else t.cast(str, name)


def protocol_version(environ: cabc.Mapping[str, t.Any]) -> str:
    """``network.protocol.version`` from ``SERVER_PROTOCOL`` (``HTTP/1.1`` -> ``1.1``); ``""``."""
    protocol = environ.get("SERVER_PROTOCOL", "")
    return protocol[5:] if isinstance(protocol, str) and protocol.startswith("HTTP/") else ""


def redact_query(query: str) -> str:
    """The query string with the values of :data:`SENSITIVE_QUERY_KEYS` redacted.

    A key is compared decoded (``Sig%6Eature`` is ``Signature``), as the app's
    ``request.args`` and opentelemetry-util-http read it; the rest of the
    query is kept as sent.
    """
    if "=" not in query:
        return query
    parts = query.split("&")
    changed = False
    for i, part in enumerate(parts):
        key, equals, _ = part.partition("=")
        if "%" in key or "+" in key:
            key = unquote_plus(key)
        if equals and key in SENSITIVE_QUERY_KEYS:
            parts[i] = part.partition("=")[0] + "=REDACTED"
            changed = True
    return "&".join(parts) if changed else query


def split_host(host: str, scheme: str) -> tuple[str, int | None]:
    """``server.address`` and ``server.port`` from a Host value (IPv6 aware)."""
    name, port = host, ""
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        name, rest = host[1:end], host[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    if port.isdigit():
        return name, int(port)
    return name, _DEFAULT_PORTS.get(scheme)
