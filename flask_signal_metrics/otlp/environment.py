"""The standard ``OTEL_*`` variables of the OTLP export, read and checked.

Each value is refused with a message naming the variable when the SDK or an
exporter could not use it: left to themselves they fall back to a default
with a log line at most.
"""

from __future__ import annotations

import collections.abc as cabc
import math
import typing as t
import urllib.parse

from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.trace.sampling import DEFAULT_OFF
from opentelemetry.sdk.trace.sampling import DEFAULT_ON
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.util.re import parse_env_headers

#: The protocols the Python exporters speak. ``http/protobuf`` is the OTLP
#: specification's default.
PROTOCOLS = ("http/protobuf", "grpc")


def env_int(
    environ: cabc.Mapping[str, str], key: str, default: int, least: int = 1, unit: str = ""
) -> int:
    value = environ.get(key, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        kind = "a positive integer" if least > 0 else "an integer, 0 or more"
        raise ValueError(f"{key} must be {kind}{unit}; got {value!r}. Unset it for {default}.")
    return number


#: The batch span processor's variables -> (the least value it can use, the
#: specification's default, the unit). Given to the processor as checked: read
#: by itself, a value it cannot parse is its default with only a log line.
BATCHING: dict[str, tuple[int, int, str]] = {
    "OTEL_BSP_SCHEDULE_DELAY": (1, 5000, " (milliseconds)"),  # the SDK refuses 0
    # Not used by the SDK (1.45): each export is bounded by the exporter's timeout.
    "OTEL_BSP_EXPORT_TIMEOUT": (0, 30000, " (milliseconds)"),
    "OTEL_BSP_MAX_QUEUE_SIZE": (1, 2048, " (spans)"),
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": (1, 512, " (spans)"),
}


def batching(environ: cabc.Mapping[str, str]) -> dict[str, int]:
    """The ``OTEL_BSP_*`` values, by variable: a batch fits in the queue."""
    found = {
        key: env_int(environ, key, default, least, unit)
        for key, (least, default, unit) in BATCHING.items()
    }
    batch, queue = found["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"], found["OTEL_BSP_MAX_QUEUE_SIZE"]
    if batch > queue:
        # The SDK refuses it too, but names neither variable.
        raise ValueError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE ({batch}) must not be larger than"
            f" OTEL_BSP_MAX_QUEUE_SIZE ({queue}), the queue batches are taken from; lower"
            " the first or raise the second (unset, they are 512 and 2048)."
        )
    return found


#: The protocol -> the endpoint its exporter sends to when none is set.
ENDPOINTS = {"http/protobuf": "http://localhost:4318", "grpc": "http://localhost:4317"}
#: The protocol -> the ``OTEL_EXPORTER_OTLP_*COMPRESSION`` values its exporter
#: can use (``none``, the default, first). The gRPC exporter reads only gzip,
#: the one compression the OTLP specification names.
COMPRESSIONS = {"http/protobuf": ("none", "gzip", "deflate"), "grpc": ("none", "gzip")}
#: The exporters' timeout when none is set, in seconds.
DEFAULT_TIMEOUT = 10.0


class Transport(t.NamedTuple):
    """One signal's exporter settings, checked: what its exporter is built with."""

    protocol: str
    endpoint: str | None  # None: unset (the HTTP exporters, given none, append the path)
    timeout: float  # seconds
    compression: str


_T = t.TypeVar("_T")


def _exporter_variable(
    environ: cabc.Mapping[str, str],
    signal: str,
    setting: str,
    check: t.Callable[[str, str, str], _T],
    protocol: str,
) -> _T | None:
    """The signal's own variable, else the general one, checked; None when both are unset.

    An empty variable is an unset one (the specification's rule), as the HTTP
    exporters read them.
    """
    for key in (f"OTEL_EXPORTER_OTLP_{signal}_{setting}", f"OTEL_EXPORTER_OTLP_{setting}"):
        value = environ.get(key, "").strip()
        if value:
            return check(key, value, protocol)
    return None


def transport(environ: cabc.Mapping[str, str], signal: str) -> Transport:
    """What ``OTEL_EXPORTER_OTLP_*`` say for ``signal`` (TRACES or METRICS), refused when unusable.

    Left to themselves the exporters fall back to a default on a bad timeout or
    compression and drop a header they cannot parse, logging a line at most.
    """
    protocol = _exporter_variable(environ, signal, "PROTOCOL", _protocol, "") or "http/protobuf"
    # The exporters parse the headers themselves (with the same parser): only checked.
    _exporter_variable(environ, signal, "HEADERS", _headers, protocol)
    timeout_key = f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT"
    if protocol == "grpc" and timeout_key in environ and not environ[timeout_key].strip():
        # The gRPC exporters call float() on it whatever they are given.
        raise ValueError(
            f"{timeout_key} is set but empty, which the gRPC exporter cannot read; unset it,"
            " or set a number of seconds."
        )
    return Transport(
        protocol,
        _exporter_variable(environ, signal, "ENDPOINT", _url, protocol),
        _exporter_variable(environ, signal, "TIMEOUT", _seconds, protocol) or DEFAULT_TIMEOUT,
        _exporter_variable(environ, signal, "COMPRESSION", _compression, protocol) or "none",
    )


def _protocol(key: str, value: str, _: str) -> str:
    if value not in PROTOCOLS:
        raise ValueError(
            f"{key}={value!r} is not supported; use 'http/protobuf' (the default) or 'grpc'."
        )
    return value


def _url(key: str, value: str, protocol: str) -> str:
    if protocol == "grpc":
        if value.startswith("unix:"):
            return value  # a gRPC target of its own kind, which gRPC checks
        if "://" not in value:
            # "collector:4317" (with OTEL_EXPORTER_OTLP_INSECURE): a gRPC
            # target, checked as the host and port of a URL.
            _url(key, "http://" + value, protocol)
            return value
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError on a port that is no port number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{key}={value!r} is not a URL the exporter can send to: give the scheme (http, or"
            f" https for TLS), the host and the port, e.g. {ENDPOINTS[protocol]!r}."
        )
    return value


def _seconds(key: str, value: str, _: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:  # NaN fails this too
        # 0 would not be "no limit": the HTTP exporter would give up on every
        # export at once, the gRPC one take its default instead.
        raise ValueError(
            f"{key}={value!r} must be a positive number of seconds, e.g. 10 (the Python OTLP"
            " exporters read seconds, not the specification's milliseconds); unset it for 10."
        )
    return seconds


def _compression(key: str, value: str, protocol: str) -> str:
    name = value.lower()
    if name not in COMPRESSIONS[protocol]:
        raise ValueError(
            f"{key}={value!r} is not a compression the {protocol} exporter can use; use one of"
            f" {', '.join(COMPRESSIONS[protocol])}, or unset it for none."
        )
    return name


def _headers(key: str, value: str, _: str) -> None:
    """Refuse an entry the exporters' parser would drop (they log it and send the rest)."""
    for number, entry in enumerate(value.split(","), 1):
        if entry.strip() and not parse_env_headers(entry, liberal=True):
            # Only the name: the value may be a secret, and this error may be logged.
            name, equals, _value = entry.partition("=")
            named = f" ({name.strip()!r})" if equals else ""
            raise ValueError(
                f"{key}: header {number}{named} is not a name=value pair the exporters can"
                " send, and would be dropped; give comma-separated name=value pairs, each"
                " value URL-encoded, e.g. 'api-key=abc123,authorization=Bearer%20xyz'."
            )


#: ``OTEL_TRACES_SAMPLER``'s values (the specification's names the Python SDK
#: implements) -> the sampler, or its factory taking ``OTEL_TRACES_SAMPLER_ARG``.
SAMPLERS: dict[str, Sampler | t.Callable[[float], Sampler]] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "traceidratio": TraceIdRatioBased,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
    "parentbased_traceidratio": ParentBasedTraceIdRatio,
}


def sampler(environ: cabc.Mapping[str, str]) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` and its argument, refused when unusable.

    The SDK, given none, reads them itself but falls back to its default on
    a typo or a bad ratio with only a log line: a deployment would then
    sample what nobody asked for.
    """
    # Enum values are case-insensitive, and an empty variable is an unset one
    # (the specification's rules for environment variables).
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    found = SAMPLERS.get(name)
    if found is None:
        raise ValueError(
            f"OTEL_TRACES_SAMPLER={environ['OTEL_TRACES_SAMPLER']!r} is not a sampler; use one"
            f" of {', '.join(SAMPLERS)}, or unset it for parentbased_always_on."
        )
    if isinstance(found, Sampler):
        return found  # takes no argument: OTEL_TRACES_SAMPLER_ARG is ignored
    return found(_ratio(environ, name))


def _ratio(environ: cabc.Mapping[str, str], sampler: str) -> float:
    value = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not value:
        return 1.0  # the specification's default for the ratio samplers
    try:
        ratio = float(value)
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:  # NaN fails this too
        raise ValueError(
            f"OTEL_TRACES_SAMPLER_ARG={value!r} must be a number from 0 to 1, the ratio of"
            f" traces {sampler} samples (e.g. 0.1 for 10 %); unset it for 1.0."
        )
    return ratio


def sdk_disabled(environ: cabc.Mapping[str, str]) -> bool:
    """``OTEL_SDK_DISABLED``: true turns the export off, as it turns the SDK off."""
    value = environ.get("OTEL_SDK_DISABLED", "").strip()
    if value.lower() not in ("", "true", "false"):
        # OpenTelemetry reads anything but "true" as false: "1" or "yes" would
        # silently leave the export on.
        raise ValueError(
            f"OTEL_SDK_DISABLED={value!r} must be 'true' (export nothing) or 'false' (the default)."
        )
    return value.lower() == "true"
