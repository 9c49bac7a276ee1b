"""Exporters and drop counting, on collectors that fail (:mod:`.otlp.exporters`)."""

from __future__ import annotations

import select
import typing as t

import pytest

if t.TYPE_CHECKING:
    pass

from .conftest import driver
from .conftest import dropped
from .conftest import finish
from .conftest import N
from .conftest import OTLP
from .conftest import refusing
from .conftest import STATUSES
from .conftest import Stuck

pytestmark = pytest.mark.real


def test_a_stuck_collector_never_holds_a_request() -> None:
    stuck = Stuck()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stuck.port}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
            "OTEL_BSP_MAX_QUEUE_SIZE": "10",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "5",
        }
        process = driver("blocked", N, env)
        try:
            assert process.stdout is not None and process.stdin is not None
            ready, _, _ = select.select([process.stdout], [], [], 30)
            assert ready and process.stdout.readline().strip() == "exporting"
            assert stuck.accepted.wait(30), "the export never connected"
            process.stdin.write("go\n")
            process.stdin.flush()
        finally:
            result = finish(process)
    finally:
        stuck.close()
    # Every request was answered while the export was stuck on the collector.
    assert result["statuses"] == STATUSES
    assert result["still_exporting"] is True
    text = result["metrics"]
    assert dropped(text, "metrics", "export_failed") > 0
    assert dropped(text, "traces", "export_failed") > 0
    # With the exports stuck, a queue of 10 overflowed: counted, not blocking.
    assert dropped(text, "traces", "queue_full") > 0


@pytest.mark.parametrize("status", [0, 400, 503], ids=["down", "400", "503"])
def test_a_refusing_or_absent_collector_is_counted(status: int) -> None:
    with refusing(status) as endpoint:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        }
        result = finish(driver("requests", N, env))
    assert result["statuses"] == STATUSES
    assert result["flushed"] is False
    assert dropped(result["metrics"], "traces", "export_failed") == N + N // 5
    assert dropped(result["metrics"], "metrics", "export_failed") > 0


@pytest.mark.parametrize(
    "target", ["collector:4317", "unix:///run/otel.sock", "http://collector:4317"]
)
def test_grpc_targets_are_taken_as_grpc_takes_them(target: str) -> None:
    """Without a scheme (with OTEL_EXPORTER_OTLP_INSECURE), or a unix socket."""
    from flask_signal_metrics.otlp.environment import transport as _transport
    from flask_signal_metrics.otlp.exporters import span_exporter as _span_exporter

    environ = {OTLP + "PROTOCOL": "grpc", OTLP + "TRACES_ENDPOINT": target}
    transport = _transport(environ, "TRACES")
    assert transport.endpoint == target
    _span_exporter(transport).shutdown()
