"""The names, label names and help texts of the extension's metrics, and its records' shapes."""

from __future__ import annotations

import typing as t

from .. import labels


class HistogramSpec(t.NamedTuple):
    """What one of the extension's histograms is made of (templates, streams, declared signals)."""

    name: str
    documentation: str
    labelnames: tuple[str, ...]
    buckets: tuple[float, ...]
    unit: str = ""


class RequestKey(t.NamedTuple):
    """The label values of one request's series.

    The receivers look series up with plain tuples of the same values (equal
    and of the same hash); the tables keep these, read by name.
    """

    method: str
    route: str
    status: str
    scheme: str
    error_type: str


#: (trace id, span id) of the sampled span a request's duration links to.
TraceIds = tuple[int, int]


class Observation(t.NamedTuple):
    """One finished request, as the request metrics record it the whole way."""

    duration: float
    #: ``None`` when unknown: not recorded (so for the response size).
    request_size: int | None
    response_size: int | None
    #: The sampled span the duration links to, if any.
    exemplar: TraceIds | None = None


class Kept(t.NamedTuple):
    """A bucket's exemplar as kept; its labels are formatted at scrape time."""

    trace_id: int
    span_id: int
    value: float
    #: Unix time.
    when: float


#: The request-metric label names of the ``otel`` scheme, in key order.
HTTP_LABELS = (
    "http_request_method",
    "http_route",
    "http_response_status_code",
    "url_scheme",
    "error_type",
)

#: The classic duration's labels, and the classic count's.
CLASSIC_LABELS = ("method", "path", "status")
CLASSIC_COUNT_LABELS = ("method", "status")

DURATION = "http_server_request_duration_seconds"
REQUEST_SIZE = "http_server_request_body_size_bytes"
RESPONSE_SIZE = "http_server_response_body_size_bytes"
CLASSIC_DURATION = "flask_http_request_duration_seconds"
CLASSIC_COUNT = "flask_http_request"
#: The extension's own health: overflows and failures, of requests and of
#: declared signals (counters; ``_total`` is added by the client).
SERIES_OVERFLOW = "flask_signal_metrics_series_overflow"
RECEIVER_ERRORS = "flask_signal_metrics_receiver_errors"
SIGNAL_OVERFLOW = "flask_signal_metrics_signal_overflow"
SIGNAL_ERRORS = "flask_signal_metrics_signal_errors"
SCRAPES_REFUSED = "flask_signal_metrics_scrapes_refused"

ACTIVE = "http_server_active_requests"
ACTIVE_LABELS = ("http_request_method", "url_scheme")

#: The help text of each request metric, the same in both backends.
HELP = {
    ACTIVE: "Number of active HTTP server requests.",
    DURATION: "Duration of HTTP server requests.",
    REQUEST_SIZE: "Size of HTTP server request bodies.",
    RESPONSE_SIZE: "Size of HTTP server response bodies.",
    CLASSIC_DURATION: "Flask HTTP request duration in seconds",
    CLASSIC_COUNT: "Total number of HTTP requests",
    SCRAPES_REFUSED: "Scrapes answered 503 in multiprocess mode: the directory's lock was held"
    " past SIGNAL_METRICS_LOCK_TIMEOUT (lock_timeout), or its file could not be opened"
    " (lock_error).",
}


class ClassicNames(t.NamedTuple):
    """prometheus-flask-exporter's names of the request metrics (naming ``classic``).

    Under a prefix (``flask`` by default, none with ``""``), with the
    duration's route label named as its grouping (``path`` by default).
    """

    duration: str = CLASSIC_DURATION
    #: The request counter (``_total`` is added on exposition).
    requests: str = CLASSIC_COUNT
    exceptions: str = "flask_http_request_exceptions"
    info: str = "flask_exporter_info"
    #: The duration's labels: method, the grouping's label, status.
    labels: tuple[str, str, str] = CLASSIC_LABELS

    @classmethod
    def make(cls, prefix: str, group_label: str) -> ClassicNames:
        start = prefix + "_" if prefix else ""
        return cls(
            start + "http_request_duration_seconds",
            start + "http_request",
            start + "http_request_exceptions",
            start + "exporter_info",
            ("method", group_label, "status"),
        )


#: The series that label sets past the cap are recorded in.
OVERFLOW_KEY = RequestKey(*(labels.OVERFLOW,) * 5)
