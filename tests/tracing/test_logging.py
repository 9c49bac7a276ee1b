"""Log records joined to traces: :mod:`flask_signal_metrics.tracing.logging`."""

from __future__ import annotations

import logging

import pytest

from flask_signal_metrics import TraceContextFilter

from ..conftest import Traced
from .conftest import TRACE_ID
from .conftest import TRACEPARENT


def test_log_records_carry_trace_and_span_ids(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test_tracing.view")

    @traced.app.get("/logs")
    def logs() -> str:
        logger.warning("inside")
        return "ok"

    caplog.handler.addFilter(TraceContextFilter())
    with caplog.at_level(logging.WARNING, logger="test_tracing.view"):
        traced.client.get("/logs", headers={"traceparent": TRACEPARENT})
        logger.warning("outside")
    inside, outside = caplog.records
    (span,) = traced.spans()
    assert inside.trace_id == TRACE_ID  # type: ignore[attr-defined]
    assert inside.span_id == f"{span.context.span_id:016x}"  # type: ignore[attr-defined]
    assert outside.trace_id == "" and outside.span_id == ""  # type: ignore[attr-defined]
