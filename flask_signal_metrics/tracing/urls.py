"""Excluded URLs, matched by opentelemetry-util-http's own ``ExcludeList``.

So that ``OTEL_PYTHON_FLASK_EXCLUDED_URLS`` means here exactly what it means
to opentelemetry-instrumentation-flask: the patterns joined into one
expression, searched (not matched) in the request's full URL.
"""

from __future__ import annotations

import collections.abc as cabc
import typing as t

from opentelemetry.util.http import ExcludeList


class UrlFilter(t.Protocol):
    """What the receivers ask of excluded URLs."""

    def url_disabled(self, url: str) -> bool: ...


def excluded_urls(patterns: cabc.Sequence[str]) -> UrlFilter | None:
    """The filter of ``SIGNAL_METRICS_EXCLUDED_URLS``'s patterns; None for none."""
    return ExcludeList(list(patterns)) if patterns else None
