"""The OTEL_* variables, read and refused: :mod:`flask_signal_metrics.otlp.environment`."""

from __future__ import annotations

import os
import re
import typing as t

import pytest

from ..conftest import free_port

if t.TYPE_CHECKING:
    pass

from .conftest import ARG
from .conftest import export_threads
from .conftest import HEADER_REFUSED
from .conftest import NOT_A_URL
from .conftest import OTLP
from .conftest import RATIO_REFUSED
from .conftest import refused
from .conftest import SAMPLER
from .conftest import SECONDS

pytestmark = pytest.mark.real


@pytest.mark.parametrize(
    ("environ", "error", "message"),
    [
        refused(
            {OTLP + "METRICS_PROTOCOL": "grpc", OTLP + "METRICS_COMPRESSION": "bogus"},
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION='bogus' is not a compression the grpc"
            " exporter can use; use one of none, gzip",
            id="grpc-compression",
        ),
        refused(
            {OTLP + "TRACES_PROTOCOL": "grpc", OTLP + "COMPRESSION": "deflate"},
            "OTEL_EXPORTER_OTLP_COMPRESSION='deflate' is not a compression the grpc",
            id="grpc-deflate",
        ),
        refused(
            {OTLP + "COMPRESSION": "brotli"},
            "OTEL_EXPORTER_OTLP_COMPRESSION='brotli' is not a compression the http/protobuf"
            " exporter can use; use one of none, gzip, deflate",
            id="http-compression",
        ),
        refused({OTLP + "TIMEOUT": "10s"}, "OTEL_EXPORTER_OTLP_TIMEOUT='10s' " + SECONDS, id="10s"),
        refused({OTLP + "TRACES_TIMEOUT": "0"}, "TRACES_TIMEOUT='0' " + SECONDS, id="timeout-0"),
        refused(
            {OTLP + "METRICS_TIMEOUT": "-5"}, "METRICS_TIMEOUT='-5' " + SECONDS, id="timeout-neg"
        ),
        refused(
            {OTLP + "PROTOCOL": "grpc", OTLP + "TRACES_TIMEOUT": ""},
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT is set but empty, which the gRPC exporter cannot"
            " read; unset it",
            id="grpc-empty-timeout",
        ),
        refused(
            {OTLP + "HEADERS": "api-key=abc123,Authorization Bearer xyz"},
            "OTEL_EXPORTER_OTLP_HEADERS: header 2 " + HEADER_REFUSED,
            id="header-without-equals",
        ),
        refused(
            {OTLP + "METRICS_HEADERS": 'authorization="Bearer xyz"'},
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS: header 1 ('authorization') " + HEADER_REFUSED,
            id="header-quoted",
        ),
        refused(
            {OTLP + "ENDPOINT": "localhost:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT='localhost:4318' " + NOT_A_URL + ": give the scheme"
            " (http, or https for TLS), the host and the port, e.g. 'http://localhost:4318'",
            id="endpoint-without-scheme",
        ),
        refused({OTLP + "ENDPOINT": "ftp://collector"}, NOT_A_URL, id="endpoint-ftp"),
        refused(
            {OTLP + "PROTOCOL": "grpc", OTLP + "ENDPOINT": "http://collector:43l7"},
            NOT_A_URL,
            id="grpc-bad-port",
        ),
        refused(
            {OTLP + "PROTOCOL": "grpc", OTLP + "ENDPOINT": "collector:43l7"},
            NOT_A_URL,
            id="grpc-target-bad-port",
        ),
        refused(
            {OTLP + "PROTOCOL": "grpc", OTLP + "ENDPOINT": "ftp://collector"},
            NOT_A_URL,
            id="grpc-ftp",
        ),
        refused({OTLP + "TRACES_ENDPOINT": "http://:4318/v1/traces"}, NOT_A_URL, id="no-host"),
        refused({OTLP + "METRICS_ENDPOINT": "http://collector:43l8"}, NOT_A_URL, id="bad-port"),
        refused(
            {"OTEL_BSP_SCHEDULE_DELAY": "5s"},
            "OTEL_BSP_SCHEDULE_DELAY must be a positive integer (milliseconds); got '5s'."
            " Unset it for 5000.",
            id="bsp-delay-5s",
        ),
        refused(
            {"OTEL_BSP_SCHEDULE_DELAY": "0"},
            "OTEL_BSP_SCHEDULE_DELAY must be a positive integer",
            id="bsp-delay-0",
        ),
        refused(
            {"OTEL_BSP_EXPORT_TIMEOUT": "-1"},
            "OTEL_BSP_EXPORT_TIMEOUT must be an integer, 0 or more (milliseconds)",
            id="bsp-timeout",
        ),
        refused(
            {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "0"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE must be a positive integer (spans)",
            id="bsp-batch-0",
        ),
        refused(
            {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE (4096) must not be larger than"
            " OTEL_BSP_MAX_QUEUE_SIZE (2048)",
            id="bsp-batch-above-queue",
        ),
        refused(
            {"OTEL_BSP_MAX_QUEUE_SIZE": "100"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE (512) must not be larger than"
            " OTEL_BSP_MAX_QUEUE_SIZE (100)",
            id="bsp-queue-below-batch",
        ),
        pytest.param(
            {SAMPLER: "always_onn"},
            ValueError,
            "OTEL_TRACES_SAMPLER='always_onn' is not a sampler; use one of always_on,"
            " always_off, traceidratio, parentbased_always_on, parentbased_always_off,"
            " parentbased_traceidratio",
            id="sampler",
        ),
        pytest.param(
            {SAMPLER: "traceidratio", ARG: "10%"},
            ValueError,
            "ARG='10%' " + RATIO_REFUSED,
            id="ratio-percent",
        ),
        pytest.param(
            {SAMPLER: "parentbased_traceidratio", ARG: "5"}, ValueError, RATIO_REFUSED, id="ratio-5"
        ),
        pytest.param(
            {SAMPLER: "traceidratio", ARG: "-0.1"}, ValueError, RATIO_REFUSED, id="ratio-negative"
        ),
        pytest.param(
            {SAMPLER: "TraceIdRatio", ARG: "nan"}, ValueError, RATIO_REFUSED, id="ratio-nan"
        ),
        pytest.param(
            {"OTEL_SDK_DISABLED": "1"},
            ValueError,
            "OTEL_SDK_DISABLED='1' must be 'true'",
            id="sdk-disabled-1",
        ),
    ],
)
def test_configure_otlp_refuses_before_setting_or_starting_anything(
    environ: dict[str, str], error: type[Exception], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused with nothing set or started: once the variable is fixed, a retry works."""
    from opentelemetry import trace

    from flask_signal_metrics import configure_otlp

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    for name, given in environ.items():
        monkeypatch.setenv(name, given)
    with pytest.raises(error, match=re.escape(message)):
        configure_otlp()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert export_threads() == []


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "ParentBased{root:AlwaysOnSampler,"),
        ({SAMPLER: "", ARG: ""}, "ParentBased{root:AlwaysOnSampler,"),  # empty is unset
        ({SAMPLER: " TraceIdRatio "}, "TraceIdRatioBased{1.0}"),
        ({SAMPLER: "traceidratio", ARG: " "}, "TraceIdRatioBased{1.0}"),
        (
            {SAMPLER: "parentbased_traceidratio", ARG: "0.25"},
            "ParentBased{root:TraceIdRatioBased{0.25},",
        ),
        ({SAMPLER: "always_off", ARG: "10%"}, "AlwaysOffSampler"),  # takes no argument
    ],
    ids=["unset", "empty", "case-and-spaces", "empty-arg", "ratio", "arg-ignored"],
)
def test_the_sampler_follows_the_specification(environ: dict[str, str], expected: str) -> None:
    """Empty is unset, names are case-insensitive, the ratio defaults to 1."""
    from flask_signal_metrics.otlp.environment import sampler as _sampler

    assert _sampler(environ).get_description().startswith(expected)


def test_a_refused_header_shows_no_value() -> None:
    """The value may be a secret, and the error may end in a log."""
    from flask_signal_metrics.otlp.environment import transport as _transport

    with pytest.raises(ValueError, match=HEADER_REFUSED) as info:
        _transport({OTLP + "HEADERS": "api-key=s3cr\u00e9t"}, "TRACES")
    assert "'api-key'" in str(info.value) and "s3cr" not in str(info.value)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_empty_exporter_variables_are_unset(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The specification's rule, which the gRPC exporters break when left to read them."""
    from flask_signal_metrics.otlp.environment import BATCHING
    from flask_signal_metrics.otlp.environment import batching as _batching
    from flask_signal_metrics.otlp.environment import transport as _transport
    from flask_signal_metrics.otlp.exporters import metric_exporter as _metric_exporter
    from flask_signal_metrics.otlp.exporters import span_exporter as _span_exporter

    settings = ("ENDPOINT", "HEADERS", "TIMEOUT", "COMPRESSION")
    for name in [OTLP + scope + s for scope in ("", "TRACES_", "METRICS_") for s in settings]:
        monkeypatch.setenv(name, "")
    for name in BATCHING:
        monkeypatch.setenv(name, "")
    monkeypatch.setenv(OTLP + "PROTOCOL", protocol)
    if protocol == "grpc":  # refused instead: see the case grpc-empty-timeout
        monkeypatch.delenv(OTLP + "TRACES_TIMEOUT")
        monkeypatch.delenv(OTLP + "METRICS_TIMEOUT")
    assert _batching(os.environ) == {key: default for key, (_, default, _) in BATCHING.items()}
    spans, metrics = _transport(os.environ, "TRACES"), _transport(os.environ, "METRICS")
    assert (spans.endpoint, spans.timeout, spans.compression) == (None, 10.0, "none")
    assert metrics == spans
    _span_exporter(spans).shutdown()
    _metric_exporter(metrics).shutdown()
