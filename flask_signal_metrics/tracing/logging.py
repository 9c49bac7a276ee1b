"""A logging filter that joins log records to traces."""

from __future__ import annotations

import logging

from opentelemetry import trace


class TraceContextFilter(logging.Filter):
    """Adds the current span's ids to log records, so that logs join traces.

    Sets ``trace_id`` (32 hex digits), ``span_id`` (16) and ``trace_sampled``
    on every record, empty strings and False outside a span:

    .. code-block:: python

        handler = logging.StreamHandler()
        handler.addFilter(TraceContextFilter())
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s [trace_id=%(trace_id)s span_id=%(span_id)s] %(message)s"
        ))

    Add it to a handler (not a logger) so that records of every logger get it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = trace.format_trace_id(span_context.trace_id)
            record.span_id = trace.format_span_id(span_context.span_id)
            record.trace_sampled = span_context.trace_flags.sampled
        else:
            record.trace_id = record.span_id = ""
            record.trace_sampled = False
        return True
