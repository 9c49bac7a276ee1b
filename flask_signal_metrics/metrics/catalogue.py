"""The families of one app: every metric the extension records, in one registry."""

from __future__ import annotations

import collections.abc as cabc
import sys
import typing as t

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Histogram

from ..multiprocess.directory import multiprocess
from ..multiprocess.directory import refused_counter
from ..multiprocess.files import FileHistogram
from ..multiprocess.files import FileRequestStats
from ..multiprocess.files import histogram
from ..multiprocess.workers import WorkerStats
from .cells import RequestStats
from .family import Family
from .family import M
from .names import ClassicNames
from .names import DURATION
from .names import HistogramSpec
from .names import RECEIVER_ERRORS
from .names import REQUEST_SIZE
from .names import RESPONSE_SIZE
from .names import SERIES_OVERFLOW
from .requests import Active
from .store import info_series


class AlreadyExported(RuntimeError):
    """``export_defaults`` on an app whose request metrics are served already."""


class Metrics:
    """Every metric the extension records for one app, in one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        naming: str,
        buckets: cabc.Sequence[float],
        size_buckets: cabc.Sequence[float],
        static_labels: cabc.Sequence[tuple[str, str]],
        max_series: int,
        version: str,
        signals: cabc.Iterable[str],
        classic: ClassicNames | None = None,
        summary: bool = False,
    ) -> None:
        self.registry = registry
        self._static_names = tuple(name for name, _ in static_labels)
        self._static = tuple(value for _, value in static_labels)
        self._cap = max_series
        self._overflow = Counter(
            SERIES_OVERFLOW,
            "Recordings folded into a metric's overflow series because it reached"
            " SIGNAL_METRICS_MAX_SERIES label sets.",
            ("metric", *self._static_names),
            registry=registry,
        )

        # The self-metrics' label values are the extension's own, a fixed few:
        # not capped, so that a small SIGNAL_METRICS_MAX_SERIES never folds them.
        self.receiver_errors = self._counter(
            RECEIVER_ERRORS,
            "Failures inside the extension's signal receivers (the request went on unharmed).",
            ("signal",),
            capped=False,
        )
        for signal in signals:
            self.receiver_errors.child((signal,))  # export 0 for series known in advance
        if multiprocess():  # the only mode with a lock a scrape can be refused for
            refused_counter()

        self._naming = naming
        self._size_buckets = size_buckets
        self._static_labels = static_labels
        self._version = version
        self.workers: WorkerStats | None = None
        if multiprocess():
            self.workers = WorkerStats(registry)
        #: The request metrics; exposed once :meth:`export_defaults` ran
        #: (recorded before, never served).
        self._shape = (classic or ClassicNames(), summary, tuple(buckets))
        # In-process until exported: unexported request metrics written to the
        # multiprocess files would be served by every scrape of the directory.
        self.requests: RequestStats | FileRequestStats = self._request_stats(*self._shape, False)
        #: Whether the request metrics are served.
        self.exported = False
        #: prometheus-flask-exporter's exception counter (classic naming only).
        self.escaped: Family[Counter] | None = None
        self.exceptions = self._counter(
            "flask_request_exceptions",
            "Unhandled exceptions raised while handling a request (got_request_exception).",
            ("http_request_method", "http_route", "error_type"),
        )
        self.template_duration = self._histogram(
            "flask_template_render_duration_seconds",
            "Time to render a template (before_render_template to template_rendered).",
            ("template",),
            buckets,
        )
        self.flashes = self._counter(
            "flask_flashed_messages", "Messages flashed, by category.", ("category",)
        )
        self.stream_ready = self._histogram(
            "flask_response_ready_duration_seconds",
            "Streamed responses: time from the request's start to its response object"
            " (the body follows; http_server_request_duration_seconds ends with it).",
            ("http_request_method", "http_route", "http_response_status_code"),
            buckets,
        )
        self.otlp_dropped = self._counter(
            "flask_signal_metrics_otlp_dropped",
            "Spans and metric points the OTLP export of this process dropped (collector"
            " down, slow or refusing, or the span queue full), and metric readings that"
            " failed (collect_failed: one per export interval); requests never wait.",
            ("signal", "reason"),
            capped=False,
        )
        for signal in ("traces", "metrics"):
            for reason in ("export_failed", "queue_full"):
                self.otlp_dropped.child((signal, reason))  # 0 for series known in advance
        self.otlp_dropped.child(("metrics", "collect_failed"))  # a reading that failed

    def in_flight(self) -> list[Active]:
        """This process's requests in flight, from the request metrics of the moment."""
        return self.requests.in_flight()

    def export_defaults(
        self, classic: ClassicNames, summary: bool, buckets: cabc.Sequence[float]
    ) -> None:
        """Serve the request metrics, their version info and (classic) exception counter.

        :param classic: the classic names (prefix, grouping label); unused in
            naming ``otel``.
        :param summary: the duration as a summary (count and sum).
        :raises AlreadyExported: they are served already.
        """
        if self.exported:
            raise AlreadyExported("The request metrics are served already; export them once.")
        if multiprocess() or (classic, summary, tuple(buckets)) != self._shape:
            # What was recorded so far had other names or buckets, or was this
            # process's alone: start afresh.
            self.requests = self._request_stats(classic, summary, buckets, multiprocess())
        classic_naming = self._naming == "classic"
        static = () if classic_naming else tuple(self._static_labels)
        info_series(
            self.registry,
            classic.info if classic_naming else "flask_signal_metrics_info",
            "Version of flask-signal-metrics.",
            (("version", self._version), *static),
        )
        if classic_naming:
            self.escaped = self._counter(
                classic.exceptions,
                "Total number of HTTP requests which resulted in an exception",
                ("method", "status"),
            )
        self.registry.register(self.requests)
        self.exported = True

    def _request_stats(
        self, classic: ClassicNames, summary: bool, buckets: cabc.Sequence[float], files: bool
    ) -> RequestStats | FileRequestStats:
        request_families = [REQUEST_SIZE, RESPONSE_SIZE]
        request_families.append(classic.duration if self._naming == "classic" else DURATION)
        overflowed = [self._overflow.labels(n, *self._static) for n in request_families]
        options: dict[str, t.Any] = {
            "naming": self._naming,
            "classic": classic,
            "summary": summary,
            "buckets": buckets,
            "size_buckets": self._size_buckets,
            "static_labels": self._static_labels,
            "max_series": self._cap,
            "overflowed": overflowed,
        }
        # Worker processes share numbers only through prometheus_client's
        # files: each writes its own (FileRequestStats).
        return FileRequestStats(**options) if files else RequestStats(**options)

    def _histogram(
        self, name: str, doc: str, labelnames: tuple[str, ...], buckets: cabc.Sequence[float]
    ) -> Family[Histogram | FileHistogram]:
        names = (*labelnames, *self._static_names)
        spec = HistogramSpec(name, doc, names, tuple(buckets), "seconds")
        return self._family(histogram(spec, self.registry), name)

    def _family(self, metric: M, name: str, capped: bool = True) -> Family[M]:
        cap = self._cap if capped else sys.maxsize
        return Family(metric, self._static, cap, self._overflow.labels(name, *self._static))

    def _counter(
        self, name: str, doc: str, labelnames: cabc.Sequence[str], capped: bool = True
    ) -> Family[Counter]:
        metric = Counter(name, doc, (*labelnames, *self._static_names), registry=self.registry)
        return self._family(metric, name + "_total", capped)
