from __future__ import annotations

import re
import typing as t

import pytest

from flask_signal_metrics.config import alternation
from flask_signal_metrics.config import DURATION_BUCKETS
from flask_signal_metrics.config import KNOWN_METHODS
from flask_signal_metrics.config import load
from flask_signal_metrics.config import Settings


def test_defaults() -> None:
    settings = load({}, {}, environ={})
    assert settings == Settings()
    assert settings.path == "/metrics"
    assert settings.naming == "otel"
    assert settings.buckets == DURATION_BUCKETS == (
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    )  # fmt: skip
    assert settings.known_methods == KNOWN_METHODS
    assert len(KNOWN_METHODS) == 9
    assert 1000 <= settings.max_series <= 5000


def test_options_override_config() -> None:
    settings = load(
        {"SIGNAL_METRICS_NAMING": "otel", "SIGNAL_METRICS_PATH": "/m"},
        {"naming": "classic"},
        environ={},
    )
    assert settings.naming == "classic"
    assert settings.path == "/m"


@pytest.mark.parametrize(
    ("key", "given", "expected"),
    [
        ("SIGNAL_METRICS_ENABLED", False, False),
        ("SIGNAL_METRICS_PATH", None, None),
        ("SIGNAL_METRICS_PATH", False, None),
        ("SIGNAL_METRICS_PATH", "/internal/metrics", "/internal/metrics"),
        ("SIGNAL_METRICS_BUCKETS", [0.1, 1, float("inf")], (0.1, 1.0)),
        ("SIGNAL_METRICS_EXCLUDE", "/static/.*", ("/static/.*",)),
        ("SIGNAL_METRICS_LABELS", {"service": "shop"}, (("service", "shop"),)),
        ("SIGNAL_METRICS_LABELS", {"api_version": 1}, (("api_version", "1"),)),
        ("SIGNAL_METRICS_MAX_SERIES", 10, 10),
    ],
)
def test_good_values(key: str, given: object, expected: object) -> None:
    settings = load({key: given}, {}, environ={})
    field = key.removeprefix("SIGNAL_METRICS_").lower()
    assert getattr(settings, field) == expected


@pytest.mark.parametrize(
    ("key", "bad", "error", "fix"),
    [
        ("SIGNAL_METRICS_ENABLED", "yes", TypeError, "True or False"),
        ("SIGNAL_METRICS_PATH", "metrics", ValueError, "'/metrics'"),
        ("SIGNAL_METRICS_PATH", 8080, TypeError, "URL path"),
        ("SIGNAL_METRICS_PATH", "/metrics/<name>", ValueError, "no '<variable>' parts"),
        ("SIGNAL_METRICS_PATH", "/m<", ValueError, "such as '/metrics'"),
        ("SIGNAL_METRICS_NAMING", "prometheus", ValueError, "'otel'"),
        ("SIGNAL_METRICS_BUCKETS", [1, 0.5], ValueError, "sort it: [0.5, 1.0]"),
        ("SIGNAL_METRICS_BUCKETS", [0.5, 0.5], ValueError, "strictly increasing"),
        ("SIGNAL_METRICS_BUCKETS", "0.1,1", TypeError, "list of numbers"),
        ("SIGNAL_METRICS_BUCKETS", [0.1, "1"], TypeError, "numbers only"),
        ("SIGNAL_METRICS_BUCKETS", [], ValueError, "at least one"),
        ("SIGNAL_METRICS_BUCKETS", [float("nan")], ValueError, "finite"),
        ("SIGNAL_METRICS_BUCKETS", [1, 10**400], ValueError, "use a smaller bound"),
        ("SIGNAL_METRICS_SIZE_BUCKETS", [10, 5], ValueError, "sort it"),
        ("SIGNAL_METRICS_EXCLUDE", ["/ok", "/bad("], ValueError, "re.escape"),
        ("SIGNAL_METRICS_EXCLUDE", [3], TypeError, "as strings"),
        ("SIGNAL_METRICS_EXCLUDE", ["/a", "(?i)/b"], ValueError, "'(?i:/health)'"),
        ("SIGNAL_METRICS_LABELS", ["service"], TypeError, "dict"),
        ("SIGNAL_METRICS_LABELS", {"1x": "a"}, ValueError, "letters, digits"),
        ("SIGNAL_METRICS_LABELS", {"__x": "a"}, ValueError, "'__'"),
        ("SIGNAL_METRICS_LABELS", {"http_route": "a"}, ValueError, "choose another"),
        ("SIGNAL_METRICS_LABELS", {"env": None}, TypeError, "a string or a number"),
        ("SIGNAL_METRICS_LABELS", {"env": lambda: "x"}, TypeError, "view metric"),
        ("SIGNAL_METRICS_LABELS", {"env": "pr\udcff"}, ValueError, "decode the bytes"),
        ("SIGNAL_METRICS_MAX_SERIES", "100", TypeError, "whole number"),
        ("SIGNAL_METRICS_MAX_SERIES", 0, ValueError, "at least 1"),
        ("SIGNAL_METRICS_MAX_SERIES", True, TypeError, "whole number"),
        ("SIGNAL_METRICS_SERVE_DEFAULT_REGISTRY", 1, TypeError, "True or False"),
        ("SIGNAL_METRICS_TRACING", "off", TypeError, "True or False"),
        ("SIGNAL_METRICS_LOCK_TIMEOUT", 0, ValueError, "more than 0 and at most 30"),
        ("SIGNAL_METRICS_LOCK_TIMEOUT", 31, ValueError, "such as 1.0"),
        ("SIGNAL_METRICS_LOCK_TIMEOUT", float("nan"), ValueError, "at most 30"),
        ("SIGNAL_METRICS_LOCK_TIMEOUT", "1", TypeError, "number of seconds"),
        ("SIGNAL_METRICS_LOCK_TIMEOUT", True, TypeError, "number of seconds"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(
    key: str, bad: object, error: type[Exception], fix: str
) -> None:
    with pytest.raises(error) as info:
        load({key: bad}, {}, environ={})
    assert key in str(info.value)
    assert fix in str(info.value)


def test_bad_option_names_the_option() -> None:
    with pytest.raises(ValueError, match=r"SIGNAL_METRICS_NAMING \(the naming= option\)"):
        load({}, {"naming": "nope"}, environ={})


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="Unknown config key SIGNAL_METRICS_BUCKET;"):
        load({"SIGNAL_METRICS_BUCKET": [1]}, {}, environ={})


@pytest.mark.parametrize(
    ("env", "expected"),
    [("GET,POST", {"GET", "POST"}), (" GET , QUERY ,", {"GET", "QUERY"})],
)
def test_known_methods_env(env: str, expected: set[str]) -> None:
    settings = load({}, {}, environ={"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS": env})
    assert settings.known_methods == expected


def test_an_empty_variable_is_unset() -> None:
    """As the OpenTelemetry spec says of every OTEL_* variable."""
    variables = [
        "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
    ]
    assert load({}, {}, environ=dict.fromkeys(variables, "")) == Settings()


@pytest.mark.parametrize(
    ("patterns", "excluded", "measured"),
    [
        (["/x", "/(b)\\1"], ["/x", "/bb"], ["/b1"]),  # one with groups: one expression
        (["/(a)\\1", "/(b)\\1"], ["/aa", "/bb"], ["/ab", "/ba"]),  # more: one by one
        (["/(?P<n>c)(?P=n)", "/(?P<n>d)(?P=n)"], ["/cc", "/dd"], ["/cd"]),
    ],
)
def test_exclusions_with_groups_mean_what_each_says_alone(
    patterns: list[str], excluded: list[str], measured: list[str]
) -> None:
    matcher = alternation(load({"SIGNAL_METRICS_EXCLUDE": patterns}, {}, environ={}).exclude)
    assert matcher is not None
    assert [path for path in excluded + measured if matcher.fullmatch(path)] == excluded


def test_known_methods_env_empty_is_an_error() -> None:
    environ: dict[str, t.Any] = {"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS": " , "}
    with pytest.raises(ValueError, match="OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"):
        load({}, {}, environ=environ)


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "capture_request_headers"),
        ("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "capture_response_headers"),
        ("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "sanitize_headers"),
    ],
)
def test_header_capture_variables(variable: str, field: str) -> None:
    settings = load({}, {}, environ={variable: " X-Request-Id , x-custom-.* ,"})
    assert getattr(settings, field) == ("X-Request-Id", "x-custom-.*")
    with pytest.raises(ValueError) as info:
        load({}, {}, environ={variable: "X-Ok,x-(bad"})
    assert variable in str(info.value) and "'X-.*'" in str(info.value)
    with pytest.raises(ValueError) as info:
        load({}, {}, environ={variable: "X-Request-Id,(?i)x-tenant-.*"})
    assert variable in str(info.value) and "'(?i)'" in str(info.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}, "use 'http/protobuf'"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "OTEL_METRIC_EXPORT_INTERVAL must be a positive"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "Unset it for 2048"),
    ],
)
def test_configure_otlp_refuses_bad_variables_before_starting(
    environ: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace

    from flask_signal_metrics import configure_otlp

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        configure_otlp()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nothing set
