"""How each ``SIGNAL_METRICS_*`` value is parsed and checked (:mod:`.config` lists the keys).

A parser takes the key's name, for its messages, and the value; it returns
the value as :class:`~.config.Settings` holds it, or raises naming the key
and the fix.
"""

from __future__ import annotations

import collections.abc as cabc
import itertools
import math
import re
import typing as t

from . import labels

NAMING_SCHEMES = ("otel", "classic")

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")

#: Label names the extension's own metrics use; a static label may not reuse one.
RESERVED_LABELS = frozenset(
    (
        "le",
        "quantile",
        "http_request_method",
        "http_route",
        "http_response_status_code",
        "url_scheme",
        "error_type",
        "method",
        "path",
        "status",
        "template",
        "category",
        "version",
        "signal",
        "reason",
        "metric",
    )
)


#: A parser gets the key's name for its messages.
Parser = t.Callable[[str, object], object]


def parse_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"{key} must be True or False, got {value!r}.")


def parse_path(key: str, value: object) -> str | None:
    if value is None or value is False or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(
            f"{key} must be a URL path such as '/metrics', or None to register"
            f" no route; got {value!r}."
        )
    if not value.startswith("/"):
        raise ValueError(f"{key} must start with '/': use {'/' + value!r}.")
    if "<" in value or ">" in value:
        # A variable part would be passed to the metrics view, which takes none.
        raise ValueError(
            f"{key} must be a fixed path with no '<variable>' parts, such as"
            f" '/metrics'; got {value!r}."
        )
    return value


def parse_naming(key: str, value: object) -> str:
    if value not in NAMING_SCHEMES:
        raise ValueError(
            f"{key} must be 'otel' (semantic-convention names, the default) or"
            f" 'classic' (prometheus-flask-exporter names); got {value!r}."
        )
    return str(value)


def parse_prefix(key: str, value: object) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _METRIC_NAME.match(value):
        raise ValueError(
            f"{key} must be the start of a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) such as"
            f" 'flask', or '' for none; got {value!r}."
        )
    return value


def parse_latency(key: str, value: object) -> str:
    if value not in ("histogram", "summary"):
        raise ValueError(f"{key} must be 'histogram' or 'summary'; got {value!r}.")
    return str(value)


def parse_buckets(key: str, value: object) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, cabc.Iterable):
        raise TypeError(f"{key} must be a list of numbers, e.g. [0.1, 0.5, 1.0].")
    bounds: list[float] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise TypeError(f"{key} must hold numbers only; {item!r} is not one.")
        try:
            bounds.append(float(item))
        except OverflowError:
            raise ValueError(
                f"{key} holds {item!r}, too large for a float; use a smaller bound."
            ) from None
    if bounds and math.isinf(bounds[-1]) and bounds[-1] > 0:
        bounds.pop()  # +Inf is always added by the client; accept it written out.
    if not bounds:
        raise ValueError(f"{key} must hold at least one finite bucket bound.")
    if any(math.isnan(b) or math.isinf(b) for b in bounds):
        raise ValueError(f"{key} must hold finite numbers (+Inf is added for you).")
    if any(a >= b for a, b in itertools.pairwise(bounds)):
        raise ValueError(
            f"{key} must be strictly increasing with no repeats; sort it: {sorted(set(bounds))!r}."
        )
    return tuple(bounds)


def parse_exclude(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, cabc.Iterable):
        raise TypeError(f"{key} must be a list of regular expressions; got {value!r}.")
    patterns: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{key} must hold regular expressions as strings; got {item!r}.")
        try:
            re.compile(item)
        except re.error as e:
            raise ValueError(
                f"{key} holds {item!r}, which is not a valid regular expression"
                f" ({e}); escape literal characters with re.escape()."
            ) from None
        patterns.append(item)
    try:  # they are matched as one alternation (one regex call per request)
        alternation(patterns)
    except re.error as e:
        raise ValueError(
            f"{key} cannot be combined into one expression ({e}); write global"
            " flags as scoped groups, e.g. '(?i:/health)' instead of '(?i)/health'."
        ) from None
    return tuple(patterns)


def parse_excluded_urls(key: str, value: object) -> tuple[str, ...]:
    """opentelemetry-util-http's form: comma-separated regexes (or a list), searched in the URL."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, cabc.Iterable):
        raise TypeError(
            f"{key} must be comma-separated regular expressions (or a list of them),"
            f" searched in the request's full URL; got {value!r}."
        )
    patterns: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{key} must hold regular expressions as strings; got {item!r}.")
        if not item:
            continue
        try:
            re.compile(item)
        except re.error as e:
            raise ValueError(
                f"{key} holds {item!r}, which is not a valid regular expression ({e});"
                " escape literal characters with re.escape(), and no commas inside one."
            ) from None
        patterns.append(item)
    try:  # opentelemetry-util-http joins them into one expression, as they are
        re.compile("|".join(patterns))
    except re.error as e:
        raise ValueError(
            f"{key} cannot be joined into one expression ({e}); write global flags as"
            " scoped groups, e.g. '(?i:healthz)' instead of '(?i)healthz'."
        ) from None
    return tuple(patterns)


def parse_hook(key: str, value: object) -> t.Callable[..., t.Any] | None:
    if value is not None and not callable(value):
        raise TypeError(
            f"{key} must be a function (called with the span and what"
            f" opentelemetry-instrumentation-flask passes its hook), or None; got {value!r}."
        )
    return t.cast("t.Callable[..., t.Any] | None", value)


class AnyOf:
    """Patterns matched one by one, for those that cannot be one expression."""

    __slots__ = ("_patterns",)

    def __init__(self, patterns: cabc.Sequence[re.Pattern[str]]) -> None:
        self._patterns = tuple(patterns)

    def fullmatch(self, text: str) -> bool:
        return any(pattern.fullmatch(text) for pattern in self._patterns)

    def search(self, text: str) -> bool:
        return any(pattern.search(text) for pattern in self._patterns)


#: What decides whether a string matches (whole, or anywhere in it) one of several patterns.
Matcher: t.TypeAlias = "re.Pattern[str] | AnyOf"


def alternation(patterns: cabc.Sequence[str], flags: int = 0) -> Matcher | None:
    """The patterns as one regex: one match call per request, whatever their number.

    Groups are numbered across the whole expression, so with two patterns
    holding groups, the second's ``\\1`` would name the first's group:
    those are matched one by one.
    """
    if not patterns:
        return None
    compiled = [re.compile(p, flags) for p in patterns]
    if sum(1 for c in compiled if c.groups) > 1:
        return AnyOf(compiled)
    return re.compile("|".join(f"(?:{p})" for p in patterns), flags)


def parse_labels(key: str, value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, cabc.Mapping):
        raise TypeError(f"{key} must be a dict of label name to value, e.g. {{'service': 'shop'}}.")
    pairs: list[tuple[str, str]] = []
    for name, label_value in value.items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(
                f"{key} has the label name {name!r}; use letters, digits and"
                " underscores, not starting with a digit or '__'."
            )
        if name in RESERVED_LABELS:
            raise ValueError(
                f"{key} has the label name {name!r}, which the extension's own"
                " metrics use; choose another name."
            )
        if callable(label_value):
            raise TypeError(
                f"{key}[{name!r}] is a function: static labels are fixed. A label taken"
                " from each request belongs on a view metric (labels= of counter(),"
                " histogram(), ...), applied to every view with register_default()."
            )
        if isinstance(label_value, (int, float)):  # as prometheus_client writes them
            label_value = str(label_value)
        if not isinstance(label_value, str):
            raise TypeError(f"{key}[{name!r}] must be a string or a number; got {label_value!r}.")
        if labels.text(label_value) != label_value:
            raise ValueError(
                f"{key}[{name!r}] holds a lone surrogate ({label_value!r}), which no"
                " exposition can encode: decode the bytes it came from as UTF-8."
            )
        pairs.append((name, label_value))
    return tuple(pairs)


def parse_max_series(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be a whole number such as 2000; got {value!r}.")
    if value < 1:
        raise ValueError(f"{key} must be at least 1; got {value}.")
    return value


def parse_known_methods(key: str, value: object) -> frozenset[str]:
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a comma-separated string of methods.")
    methods = frozenset(m.strip() for m in value.split(",") if m.strip())
    if not methods:
        raise ValueError(f"{key} is set but names no method; unset it or list methods.")
    return methods


def parse_semconv_opt_in(key: str, value: object) -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` asks for the old HTTP names too (``http/dup``).

    A comma-separated list of the conventions' signal types; values for
    other types (``database``, ...) are not ours to refuse.
    """
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a comma-separated string, such as 'http/dup'.")
    return "http/dup" in (part.strip() for part in value.split(","))


def parse_basic_auth(key: str, value: object) -> tuple[str, str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise TypeError(
            f"{key} must be a (username, password) pair of non-empty strings, or None;"
            " read them from the environment, not from source code."
        )
    return (value[0], value[1])


def parse_bearer_token(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < 16:
        raise ValueError(
            f"{key} must be a string of at least 16 characters, or None; generate one with"
            " python -c 'import secrets; print(secrets.token_urlsafe(32))'."
        )
    return value


def parse_decorator(key: str, value: object) -> t.Callable[..., t.Any] | None:
    if value is not None and not callable(value):
        raise TypeError(f"{key} must be a view decorator (a callable), or None; got {value!r}.")
    return t.cast("t.Callable[..., t.Any] | None", value)


def parse_port(key: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(
            f"{key} must be a TCP port (1-65535), or None for no server; got {value!r}."
        )
    return value


def parse_addr(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"{key} must be an address to listen on, such as '127.0.0.1'; got {value!r}."
        )
    return value


#: The longest SIGNAL_METRICS_LOCK_TIMEOUT: a scrape's thread is held that long at most.
MAX_LOCK_TIMEOUT = 30.0


def parse_lock_timeout(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key} must be a number of seconds such as 1.0; got {value!r}.")
    if not 0 < value <= MAX_LOCK_TIMEOUT:
        raise ValueError(
            f"{key} must be more than 0 and at most {MAX_LOCK_TIMEOUT:g} seconds, such as"
            " 1.0: how long a scrape waits for the multiprocess directory's lock before"
            f" answering 503; got {value!r}."
        )
    return float(value)


def parse_header_patterns(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a comma-separated string of header names.")
    patterns = tuple(p.strip() for p in value.split(",") if p.strip())
    for pattern in patterns:
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise ValueError(
                f"{key}: {pattern!r} is not a valid regular expression ({e}); list header"
                " names such as 'X-Request-Id,User-Agent', or regexes such as 'X-.*'."
            ) from None
    try:  # matched as one expression, as the exclusions are
        alternation(patterns, re.IGNORECASE)
    except re.error as e:
        raise ValueError(
            f"{key} cannot be combined into one expression ({e}); header names match"
            " whatever their case already: drop global flags such as '(?i)'."
        ) from None
    return patterns
