"""Every ``SIGNAL_METRICS_*`` key: its default, its meaning and its validation.

This is the one place a config key is spelled. :func:`load` reads the app's
config once, in ``init_app``, and turns it into a frozen :class:`Settings`;
nothing reads ``app.config`` on the request path.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import os
import typing as t

from . import grouping
from .parsers import alternation as alternation
from .parsers import AnyOf as AnyOf
from .parsers import Matcher as Matcher
from .parsers import MAX_LOCK_TIMEOUT as MAX_LOCK_TIMEOUT
from .parsers import NAMING_SCHEMES as NAMING_SCHEMES
from .parsers import parse_addr
from .parsers import parse_basic_auth
from .parsers import parse_bearer_token
from .parsers import parse_bool
from .parsers import parse_buckets as parse_buckets
from .parsers import parse_decorator
from .parsers import parse_exclude
from .parsers import parse_excluded_urls
from .parsers import parse_header_patterns
from .parsers import parse_hook
from .parsers import parse_known_methods
from .parsers import parse_labels
from .parsers import parse_latency
from .parsers import parse_lock_timeout
from .parsers import parse_max_series
from .parsers import parse_naming
from .parsers import parse_path
from .parsers import parse_port
from .parsers import parse_prefix
from .parsers import parse_semconv_opt_in
from .parsers import Parser as Parser
from .parsers import RESERVED_LABELS as RESERVED_LABELS

#: The semantic conventions' advice for ``http.server.request.duration``
#: (seconds); identical to prometheus_client's default buckets.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

#: Body sizes in bytes: powers of four from 64 B to 16 MiB.
SIZE_BUCKETS: tuple[float, ...] = tuple(float(4**n) for n in range(3, 13))

#: RFC 9110's methods plus PATCH (RFC 5789): the conventions' "known" methods.
KNOWN_METHODS: frozenset[str] = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
)

#: The environment variable the semantic conventions name for overriding
#: :data:`KNOWN_METHODS` (a full override, comma separated, case sensitive).
KNOWN_METHODS_ENV = "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"

#: The standard variables for capturing headers as span attributes
#: (comma-separated names or regular expressions, case-insensitive).
CAPTURE_REQUEST_ENV = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"
CAPTURE_RESPONSE_ENV = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE"
SANITIZE_ENV = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"

#: How long a scrape waits for the multiprocess directory's lock by default
#: (SIGNAL_METRICS_LOCK_TIMEOUT); a compaction holds it for milliseconds.
LOCK_TIMEOUT = 1.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated configuration of one app's extension."""

    enabled: bool = True
    path: str | None = "/metrics"
    naming: str = "otel"
    buckets: tuple[float, ...] = DURATION_BUCKETS
    size_buckets: tuple[float, ...] = SIZE_BUCKETS
    exclude: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    max_series: int = 2000
    serve_default_registry: bool = True
    known_methods: frozenset[str] = KNOWN_METHODS
    basic_auth: tuple[str, str] | None = None
    bearer_token: str | None = None
    decorator: t.Callable[..., t.Any] | None = None
    port: int | None = None
    addr: str = "127.0.0.1"
    tracing: bool = True
    capture_request_headers: tuple[str, ...] = ()
    capture_response_headers: tuple[str, ...] = ()
    sanitize_headers: tuple[str, ...] = ()
    lock_timeout: float = LOCK_TIMEOUT
    group_by: grouping.Grouping = grouping.ROUTE
    prefix: str = "flask"
    latency: str = "histogram"
    export_defaults: bool = True
    exclude_view_metrics: bool = True
    excluded_urls: tuple[str, ...] = ()
    request_hook: t.Callable[..., t.Any] | None = None
    response_hook: t.Callable[..., t.Any] | None = None
    #: OTEL_SEMCONV_STABILITY_OPT_IN=http/dup: the old HTTP names besides the stable ones.
    http_dup: bool = False


class Key(t.NamedTuple):
    """One setting: the :class:`Settings` field it fills, its parser, what it means.

    Its default is the field's default in :class:`Settings`.
    """

    field: str
    parse: Parser
    description: str


#: Every ``SIGNAL_METRICS_*`` config key, in the order the docs list them.
KEYS: dict[str, Key] = {
    "SIGNAL_METRICS_ENABLED": Key(
        "enabled", parse_bool, "``False`` connects no receiver and registers no route."
    ),
    "SIGNAL_METRICS_PATH": Key(
        "path",
        parse_path,
        'Where metrics are served (GET, HEAD, OPTIONS). ``None``/``False``/``""``: no'
        " route (serve them yourself). A path the app already routes is an error.",
    ),
    "SIGNAL_METRICS_NAMING": Key(
        "naming",
        parse_naming,
        '``"otel"``: OpenTelemetry HTTP semantic-convention names. ``"classic"``:'
        " prometheus-flask-exporter's names. See the metric catalogue.",
    ),
    "SIGNAL_METRICS_BUCKETS": Key(
        "buckets",
        parse_buckets,
        "Duration buckets in seconds, strictly increasing; ``+Inf`` is added."
        " Also used for template renders.",
    ),
    "SIGNAL_METRICS_SIZE_BUCKETS": Key(
        "size_buckets",
        parse_buckets,
        "Body-size buckets in bytes (powers of 4 from 64 B to 16 MiB).",
    ),
    "SIGNAL_METRICS_EXCLUDE": Key(
        "exclude",
        parse_exclude,
        "Regular expressions; a request whose path fully matches one is not measured.",
    ),
    "SIGNAL_METRICS_LABELS": Key(
        "labels",
        parse_labels,
        'Static labels added to every metric of the extension, e.g. ``{"service": "shop"}``.'
        " Names may not reuse the extension's own label names.",
    ),
    "SIGNAL_METRICS_MAX_SERIES": Key(
        "max_series",
        parse_max_series,
        "Per-metric cap on label sets; past it, new label sets go to the overflow series.",
    ),
    "SIGNAL_METRICS_SERVE_DEFAULT_REGISTRY": Key(
        "serve_default_registry",
        parse_bool,
        "``/metrics`` also serves prometheus_client's default registry (process, platform"
        " and GC metrics, your own module-level metrics). ``False`` serves the extension's"
        " families only, in multiprocess mode too.",
    ),
    "SIGNAL_METRICS_BASIC_AUTH": Key(
        "basic_auth",
        parse_basic_auth,
        "``(username, password)``: ``/metrics`` asks for HTTP basic auth (401 with"
        " ``WWW-Authenticate``, constant-time comparison).",
    ),
    "SIGNAL_METRICS_BEARER_TOKEN": Key(
        "bearer_token",
        parse_bearer_token,
        "A token of 16+ characters: ``/metrics`` also accepts ``Authorization: Bearer <token>``"
        " (Prometheus's ``authorization`` / ``bearer_token`` scrape settings).",
    ),
    "SIGNAL_METRICS_DECORATOR": Key(
        "decorator",
        parse_decorator,
        "Your own view decorator for ``/metrics`` (``login_required``, an IP check); it"
        " guards the app's route only, so with a port set, set basic or bearer auth too.",
    ),
    "SIGNAL_METRICS_PORT": Key(
        "port",
        parse_port,
        "Also serve the metrics on this port, from a small threaded server in a daemon"
        " thread of this process (one process only: for several workers use"
        " ``start_metrics_server``).",
    ),
    "SIGNAL_METRICS_ADDR": Key("addr", parse_addr, "The address that port's server listens on."),
    "SIGNAL_METRICS_TRACING": Key(
        "tracing",
        parse_bool,
        "Make OpenTelemetry spans with the configured tracer provider; nothing happens"
        " while no SDK is configured.",
    ),
    "SIGNAL_METRICS_LOCK_TIMEOUT": Key(
        "lock_timeout",
        parse_lock_timeout,
        "Multiprocess mode: seconds (more than 0, at most 30) a scrape waits for the"
        " directory's lock before answering 503 with ``Retry-After: 1``.",
    ),
    "SIGNAL_METRICS_EXPORT_DEFAULTS": Key(
        "export_defaults",
        parse_bool,
        "``False``: the request metrics are not served until ``export_defaults()`` is called.",
    ),
    "SIGNAL_METRICS_EXCLUDE_VIEW_METRICS": Key(
        "exclude_view_metrics",
        parse_bool,
        "An excluded path's requests skip the view metrics too; ``False`` records them.",
    ),
    # opentelemetry-instrumentation-flask's options, with its names and semantics.
    "SIGNAL_METRICS_EXCLUDED_URLS": Key(
        "excluded_urls",
        parse_excluded_urls,
        "Comma-separated regular expressions searched in the full URL (as"
        " opentelemetry-util-http's ``ExcludeList``): such requests make no span and no"
        " metric. Unset: ``OTEL_PYTHON_FLASK_EXCLUDED_URLS``, else ``OTEL_PYTHON_EXCLUDED_URLS``.",
    ),
    "SIGNAL_METRICS_REQUEST_HOOK": Key(
        "request_hook",
        parse_hook,
        "``hook(span, environ)``, called when a request's server span has started; what it"
        " raises is counted, never the request's.",
    ),
    "SIGNAL_METRICS_RESPONSE_HOOK": Key(
        "response_hook",
        parse_hook,
        '``hook(span, status, response_headers)`` (``"200 OK"``, a copy of the header'
        " list), called before the server span ends; what it raises is counted.",
    ),
    # Naming "classic" only: prometheus-flask-exporter's options.
    "SIGNAL_METRICS_GROUP_BY": Key(
        "group_by",
        grouping.parse,
        'The route label: ``"route"`` (the rule\'s template), ``"endpoint"``, ``"path"``,'
        ' ``"full_path"``, or a named function of the request; named as it (``path``).',
    ),
    "SIGNAL_METRICS_PREFIX": Key(
        "prefix", parse_prefix, 'The start of the request metrics\' names; ``""`` for none.'
    ),
    "SIGNAL_METRICS_LATENCY": Key(
        "latency", parse_latency, '``"summary"``: the duration as a summary (count and sum).'
    ),
}

#: The standard environment variables read in ``init_app``.
ENVIRON: dict[str, Key] = {
    "OTEL_SEMCONV_STABILITY_OPT_IN": Key(
        "http_dup",
        parse_semconv_opt_in,
        "``http/dup``: spans and meter-provider metrics carry the old experimental HTTP"
        " names (``http.method``, ``http.server.duration`` ...) besides the stable ones,"
        " which are the default (``http``).",
    ),
    KNOWN_METHODS_ENV: Key(
        "known_methods",
        parse_known_methods,
        "A comma-separated, case-sensitive list that replaces the known HTTP methods.",
    ),
    CAPTURE_REQUEST_ENV: Key(
        "capture_request_headers",
        parse_header_patterns,
        "Request headers recorded as ``http.request.header.<name>`` span attributes"
        " (comma-separated names or regular expressions, case-insensitive).",
    ),
    CAPTURE_RESPONSE_ENV: Key(
        "capture_response_headers",
        parse_header_patterns,
        "Response headers recorded as ``http.response.header.<name>`` span attributes.",
    ),
    SANITIZE_ENV: Key(
        "sanitize_headers",
        parse_header_patterns,
        "Captured headers whose name contains a match have their values recorded as"
        " ``[REDACTED]``.",
    ),
}

#: Standard variables read only when their setting is not given, first found wins.
FALLBACK_ENVIRON: dict[str, tuple[str, ...]] = {
    "excluded_urls": ("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"),
}

#: Keyword option name (as accepted by ``SignalMetrics``) -> config key.
OPTIONS: dict[str, str] = {k.field: name for name, k in KEYS.items()}


_DEFAULTS: dict[str, object] = {f.name: f.default for f in dataclasses.fields(Settings)}


def default(key: Key) -> object:
    """The value a key takes when it is not set: its :class:`Settings` field's default."""
    return _DEFAULTS[key.field]


def load(
    config: cabc.Mapping[str, t.Any],
    options: cabc.Mapping[str, object],
    environ: cabc.Mapping[str, str] = os.environ,
) -> Settings:
    """Validate ``config`` (an app's config) overridden by ``options``.

    :param config: the app's config; only ``SIGNAL_METRICS_*`` keys are read.
    :param options: keyword options given to the extension, named as the
        :class:`Settings` fields; they take precedence over ``config``.
    :param environ: where the standard ``OTEL_INSTRUMENTATION_HTTP_*``
        variables are read from.
    :raises TypeError, ValueError: naming the key and the fix.
    """
    for name in config:
        if name.startswith("SIGNAL_METRICS_") and name not in KEYS:
            raise ValueError(f"Unknown config key {name}; the keys are: {', '.join(sorted(KEYS))}.")
    values: dict[str, object] = {}
    for key, spec in KEYS.items():
        if spec.field in options:
            values[spec.field] = spec.parse(
                f"{key} (the {spec.field}= option)", options[spec.field]
            )
        elif key in config:
            values[spec.field] = spec.parse(key, config[key])
    for variable, spec in ENVIRON.items():
        if environ.get(variable):  # empty is unset, as the OpenTelemetry spec says
            values[spec.field] = spec.parse(variable, environ[variable])
    fields = {spec.field: spec for spec in KEYS.values()}
    for field, variables in FALLBACK_ENVIRON.items():
        found = next((v for v in variables if environ.get(v)), None)
        if field not in values and found is not None:
            values[field] = fields[field].parse(found, environ[found])
    settings = Settings(**values)  # type: ignore[arg-type]
    _check_port_guard(settings)
    _check_classic(settings)
    return settings


def load_arguments(function: str, arguments: cabc.Mapping[str, object]) -> Settings:
    """Validate a function's keyword arguments that mean what config keys mean.

    Each is parsed as its key is, with messages naming ``function(name=)``.
    """
    fields = {k.field: k.parse for k in KEYS.values()}
    values = {
        name: fields[name](f"{function}({name}=)", value) for name, value in arguments.items()
    }
    return Settings(**values)  # type: ignore[arg-type]


def _check_classic(settings: Settings) -> None:
    """prometheus-flask-exporter's options name its metrics: naming ``classic`` only."""
    if settings.naming == "classic":
        return
    for field in ("group_by", "prefix", "latency"):
        if getattr(settings, field) != _DEFAULTS[field]:
            raise ValueError(
                f"SIGNAL_METRICS_{field.upper()} shapes the classic metrics"
                " (prometheus-flask-exporter's names); set SIGNAL_METRICS_NAMING to"
                " 'classic' too, or unset it: the otel names follow the conventions."
            )


def _check_port_guard(settings: Settings) -> None:
    """A guard written for the app's view cannot run on the port: never serve it unguarded.

    The port's requests are no Flask request (no ``flask.request``, no
    ``current_user``, no ``abort``), so its only guards are the credentials.
    """
    unguarded = settings.basic_auth is None and settings.bearer_token is None
    if settings.decorator is not None and settings.port is not None and unguarded:
        raise ValueError(
            "SIGNAL_METRICS_DECORATOR guards the app's metrics route only, and"
            " SIGNAL_METRICS_PORT is set: that port cannot run a view decorator (its"
            " requests are not the app's), so it would serve the metrics to anyone who can"
            " connect. Guard the port with SIGNAL_METRICS_BASIC_AUTH or"
            " SIGNAL_METRICS_BEARER_TOKEN (the route then asks for them too, after the"
            " decorator), or unset SIGNAL_METRICS_PORT."
        )
