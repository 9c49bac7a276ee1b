"""The Prometheus metric catalogue and its exposition.

The only module that imports prometheus_client. It knows nothing of Flask: the
receivers hand it label values and numbers, the ``/metrics`` view hands it the
media types the client accepts.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import contextvars
import copy
import dataclasses
import fcntl
import functools
import glob
import itertools
import logging
import os
import stat
import sys
import threading
import time
import typing as t
from bisect import bisect_left
from bisect import bisect_right

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import ProcessCollector
from prometheus_client import REGISTRY
from prometheus_client import values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from . import labels
from .config import LOCK_TIMEOUT
from .forks import at_fork

logger = logging.getLogger("flask_signal_metrics")

M = t.TypeVar("M", bound="MetricWrapperBase | FileHistogram")

_time = time.time

#: The label values of one request: method, route, status, scheme, error type.
RequestKey = tuple[str, str, str, str, str]

#: (trace id, span id) of the sampled span a request's duration links to.
TraceIds = tuple[int, int]

#: A bucket's exemplar as kept: (trace id, span id, value, unix time). Its
#: labels are formatted at scrape time, not on the request path.
_Kept = tuple[int, int, float, float]

#: The request-metric label names of the ``otel`` scheme, in key order.
HTTP_LABELS = (
    "http_request_method",
    "http_route",
    "http_response_status_code",
    "url_scheme",
    "error_type",
)

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


class Family(t.Generic[M]):
    """One labelled prometheus_client metric whose label sets are capped.

    The children are cached in a dict keyed by the label tuple (``labels()``
    validates and locks on every call), and the same dict bounds the series
    count. Past ``cap`` label sets, new ones are recorded in one series whose
    variable labels are all :data:`labels.OVERFLOW`, and each such recording
    is counted in ``flask_signal_metrics_series_overflow_total``.
    """

    __slots__ = (
        "__weakref__",
        "_cap",
        "_children",
        "_folded",
        "_lock",
        "_metric",
        "_overflowed",
        "_static",
    )

    def __init__(self, metric: M, static: tuple[str, ...], cap: int, overflowed: Counter) -> None:
        self._metric = metric
        self._static = static
        self._cap = cap
        self._overflowed = overflowed
        self._children: dict[tuple[str, ...], M] = {}
        if not metric._labelnames:
            self._children[()] = metric  # a metric without labels is its own series
        #: The overflow series, made at the first overflow.
        self._folded: M | None = None
        self._lock = threading.Lock()
        at_fork(self._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()

    def kept(self, key: tuple[str, ...]) -> M | None:
        """The series of ``key`` if it has one of its own (not the overflow series)."""
        return self._children.get(key)

    def child(self, key: tuple[str, ...]) -> M:
        """The series for ``key`` (label values without the static labels)."""
        found = self._children.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._children.get(key)
            if found is not None:
                return found
            if len(self._children) < self._cap:
                values = map(labels.text, key)  # once per label set: the cache holds ``key``
                made = t.cast(M, self._metric.labels(*values, *self._static))  # same type
                self._children[key] = made
                return made
        # Folded label sets are not remembered: remembering them is the
        # unbounded memory the cap exists to prevent.
        self._overflowed.inc()
        folded = self._folded
        if folded is None:
            overflow = (labels.OVERFLOW,) * len(key)
            folded = self._folded = t.cast(M, self._metric.labels(*overflow, *self._static))
        return folded


def _counted(counter: itertools.count[int]) -> int:
    # itertools.count has no read method; its repr is "count(N)".
    return int(repr(counter)[6:-1])


class Group:
    """The requests of one (method, scheme): their in-flight count.

    ``started`` and ``finished`` are ``itertools.count``s: ``next()`` on one
    is a single atomic C call under the GIL, so neither end of a request
    takes a lock. In flight = started - finished.
    """

    __slots__ = ("finished", "started")

    def __init__(self) -> None:
        self.started = itertools.count()
        self.finished = itertools.count()

    def active(self) -> int:
        finished = _counted(self.finished)  # first: never more finished than started
        return _counted(self.started) - finished


#: A pending observation: (duration, request size, response size, exemplar).
_Pending = tuple[float, "int | None", "int | None", "_Kept | None"]

#: Past this many pending observations the recording thread folds them.
_FOLD_AT = 256


class _Cells:
    """One request series' histograms: duration, request and response size.

    The request path only appends its observation to ``pending`` (one
    ``list.append``, atomic under the GIL): no lock. A lock taken on every
    request formed a convoy under gunicorn's gthread workers, measured with 4
    threads in one process: 55 % of acquisitions contended and the
    extension's cost per request up from about 20 µs to 180-220 µs
    (prometheus-flask-exporter, a lock per value, +90 µs). Observations are
    folded into the buckets under ``fold_lock`` at scrape time, or by the
    recording thread once ``_FOLD_AT`` are pending (skipped if another
    thread is folding); the fold takes the first ``n`` and deletes exactly
    those (``del pending[:n]``, atomic), so nothing appended meanwhile is lost.
    :class:`RequestStats` exposes them through prometheus_client's own metric
    families, which :func:`render` writes with :class:`_HistogramLines`.
    """

    __slots__ = (
        "duration",
        "duration_sum",
        "exemplars",
        "fold_lock",
        "pending",
        "request",
        "request_sum",
        "response",
        "response_sum",
    )

    def __init__(self, duration_buckets: int, size_buckets: int) -> None:
        self.pending: list[_Pending] = []
        self.fold_lock = threading.Lock()
        self.duration = [0] * duration_buckets  # per bucket, not cumulative
        self.duration_sum = 0.0
        #: The latest exemplar of each duration bucket (OpenMetrics keeps one).
        self.exemplars: list[_Kept | None] = [None] * duration_buckets
        self.request = [0] * size_buckets
        self.request_sum = 0.0
        self.response = [0] * size_buckets
        self.response_sum = 0.0

    def fold(self, bounds: list[float], size_bounds: list[float]) -> None:
        """Add the pending observations to the buckets (hold ``fold_lock``).

        Column by column with C-level builtins (``zip``, ``sorted``, ``sum``,
        one ``bisect`` per bucket bound): a Python loop over observations,
        one bisect each, cost 7 600 instructions per request (counted by
        valgrind, bench/bench_instructions.py), this about 1 200.
        """
        pending = self.pending
        n = len(pending)
        if not n:
            return
        durations, request_sizes, response_sizes, exemplars = zip(*pending[:n], strict=True)
        del pending[:n]
        _count_into(self.duration, bounds, durations)
        self.duration_sum += sum(durations)
        self.request_sum += _sizes_into(self.request, size_bounds, request_sizes)
        self.response_sum += _sizes_into(self.response, size_bounds, response_sizes)
        if exemplars.count(None) != n:
            kept = self.exemplars
            for duration, exemplar in itertools.compress(
                zip(durations, exemplars, strict=True), exemplars
            ):
                kept[bisect_left(bounds, duration)] = exemplar  # the latest wins

    def snapshot(
        self, bounds: list[float], size_bounds: list[float]
    ) -> tuple[list[int], float, list[int], float, list[int], float, list[_Kept | None]]:
        with self.fold_lock:
            self.fold(bounds, size_bounds)
            return (
                list(self.duration),
                self.duration_sum,
                list(self.request),
                self.request_sum,
                list(self.response),
                self.response_sum,
                list(self.exemplars),
            )


def _count_into(counts: list[int], bounds: list[float], values: cabc.Iterable[float]) -> None:
    """Add each value to its bucket's count: the first bound >= the value."""
    ordered = sorted(values)
    total = len(ordered)
    below = 0
    for index, bound in enumerate(bounds):
        upto = bisect_right(ordered, bound)  # the values <= bound
        counts[index] += upto - below
        below = upto
        if below == total:
            return


def _sizes_into(counts: list[int], bounds: list[float], sizes: tuple[int | None, ...]) -> int:
    """Count the known sizes (None: unknown, not recorded); their sum."""
    known = t.cast(
        "cabc.Sequence[int]",
        sizes if None not in sizes else [size for size in sizes if size is not None],
    )
    _count_into(counts, bounds, known)
    return sum(known)


S = t.TypeVar("S")


def _capped(
    table: dict[RequestKey, S],
    key: RequestKey,
    lock: threading.Lock,
    cap: int,
    overflowed: cabc.Sequence[Counter],
    make: t.Callable[[RequestKey], S],
) -> S:
    """A request series not yet in ``table``: made, or the overflow series past ``cap``."""
    with lock:
        found = table.get(key)
        if found is not None:
            return found
        if len(table) >= cap:
            # Folded label sets are not remembered: remembering them is the
            # unbounded memory the cap prevents.
            for counter in overflowed:
                counter.inc()
            key = _OVERFLOW_KEY
            found = table.get(key)
            if found is not None:
                return found
        found = table[key] = make(key)
        return found


class _RequestMetrics(Collector):
    """What both request backends share: their options, ``le`` strings and lock."""

    def __init__(
        self,
        *,
        naming: str,
        buckets: cabc.Sequence[float],
        size_buckets: cabc.Sequence[float],
        static_labels: cabc.Sequence[tuple[str, str]],
        max_series: int,
        overflowed: cabc.Sequence[Counter],
    ) -> None:
        self._classic = naming == "classic"
        self._bounds = [*buckets, float("inf")]
        self._size_bounds = [*size_buckets, float("inf")]
        # The client's own formatting of ``le`` ("0.005", "1.0", "+Inf"), once.
        self._les = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._size_les = [floatToGoString(b) for b in self._size_bounds]  # type: ignore[no-untyped-call]
        self._static_names = tuple(name for name, _ in static_labels)
        self._static = tuple(value for _, value in static_labels)
        self._cap = max_series
        self._overflowed = overflowed
        self._lock = threading.Lock()
        #: By format: how each family is written (None: by the client), see :meth:`_written`.
        self._formats: dict[t.Hashable, list[_HistogramLines | None]] = {}
        at_fork(self._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return self._families()

    def _written(self, families: list[Metric]) -> list[Metric]:
        """``families``, or in a :func:`render` their histograms as rows that it writes itself.

        A format's lines are learnt at its first render; a few formats only
        (the ``Accept`` header is the client's to choose), others are written
        by prometheus_client.
        """
        form = _RENDERING.get()
        if form is None or form.key is None:
            return families
        written = self._formats.get(form.key)
        if written is None:
            if len(self._formats) >= _MAX_FORMATS:
                return families
            texts: dict[tuple[str, ...], _Texts] = {}  # by label names
            written = []
            for family in families:
                labelnames, les = self._shape(family)
                shared = texts.setdefault(tuple(labelnames), {})
                written.append(_HistogramLines.probe(form, family, labelnames, les, shared))
            self._formats[form.key] = written
        return [
            family if lines is None else _Rows(family, lines)
            for family, lines in zip(families, written, strict=True)
        ]

    def _shape(self, family: Metric) -> tuple[list[str], list[str]]:
        """A request histogram's label names and ``le`` values (as :func:`_request_families`)."""
        if family.name == CLASSIC_DURATION:
            return ["method", "path", "status", *self._static_names], self._les
        les = self._les if family.name == DURATION else self._size_les
        return [*HTTP_LABELS, *self._static_names], les

    def _families(self) -> list[Metric]:
        active = GaugeMetricFamily(
            ACTIVE, HELP[ACTIVE], labels=[*ACTIVE_LABELS, *self._static_names]
        )
        return [active, *_request_families(self._classic, self._static_names)]


class RequestStats(_RequestMetrics):
    """The request metrics of one app, as a prometheus_client collector.

    Naming ``otel``: ``http_server_request_duration_seconds`` and the two body
    size histograms, labelled by :data:`HTTP_LABELS`. Naming ``classic``: the
    duration becomes prometheus-flask-exporter's
    ``flask_http_request_duration_seconds{method,path,status}`` plus
    ``flask_http_request_total{method,status}``, summed from the same cells
    at scrape time. Both: ``http_server_active_requests{http_request_method,
    url_scheme}``.
    """

    def __init__(self, **options: t.Any) -> None:
        super().__init__(**options)
        #: (method, scheme) -> Group; read directly on the request path.
        self.groups: dict[tuple[str, str], Group] = {}
        self._cells: dict[RequestKey, _Cells] = {}

    def group(self, method: str, scheme: str) -> Group:
        """The group of (method, scheme); both come from small fixed sets."""
        found = self.groups.get((method, scheme))
        if found is None:
            with self._lock:
                found = self.groups.setdefault((method, scheme), Group())
        return found

    def record(
        self,
        key: RequestKey,
        group: Group | None,
        duration: float,
        request_size: int | None,
        response_size: int | None,
        exemplar: TraceIds | None = None,
    ) -> None:
        """Record one finished request.

        :param group: the group whose ``started`` counted this request in
            flight, or ``None`` if it was not counted.
        :param request_size: ``None`` when unknown: not recorded.
        :param response_size: ``None`` when unknown: not recorded.
        :param exemplar: the sampled span the duration links to, if any.
        """
        cells = self._cells.get(key) or _capped(
            self._cells, key, self._lock, self._cap, self._overflowed, self._new_cells
        )
        kept = None if exemplar is None else (*exemplar, duration, _time())
        cells.pending.append((duration, request_size, response_size, kept))
        if group is not None:
            next(group.finished)
        if len(cells.pending) > _FOLD_AT:
            self.fold_some(cells)

    def recorder(self, key: RequestKey, group: Group) -> Recorder | None:
        """What :meth:`record` does for ``key`` and ``group``, bound: None if ``key`` overflowed."""
        cells = self._cells.get(key)
        return None if cells is None else Recorder(self, cells, group)

    def fold_some(self, cells: _Cells) -> None:
        """Fold a series' pending observations, unless another thread is folding them."""
        if cells.fold_lock.acquire(blocking=False):
            try:
                cells.fold(self._bounds, self._size_bounds)
            finally:
                cells.fold_lock.release()

    def _new_cells(self, key: RequestKey) -> _Cells:
        return _Cells(len(self._bounds), len(self._size_bounds))

    def _forked(self) -> None:
        super()._forked()
        for cells in self._cells.values():
            cells.fold_lock = threading.Lock()

    # -- exposition ---------------------------------------------------------

    def collect(self) -> list[Metric]:
        families = self._written(self._families())
        active, duration, request, response = families[0], families[1], families[-2], families[-1]
        with self._lock:
            groups = list(self.groups.items())
            series = list(self._cells.items())
        for (method, scheme), group in groups:
            t.cast(GaugeMetricFamily, active).add_metric(
                [method, scheme, *self._static], group.active()
            )
        classic: dict[tuple[str, str, str], list[t.Any]] = {}
        for key, cells in series:
            (durations, duration_sum, requests, request_sum, responses, response_sum, kept) = (
                cells.snapshot(self._bounds, self._size_bounds)
            )
            values = [*key, *self._static]
            if not self._classic:
                _add_histogram(duration, values, self._les, durations, duration_sum, kept)
            elif (key[0], key[1], key[2]) in classic:
                merged = classic[(key[0], key[1], key[2])]
                merged[0] = [a + b for a, b in zip(merged[0], durations, strict=True)]
                merged[1] += duration_sum
                merged[2] = [_latest(a, b) for a, b in zip(merged[2], kept, strict=True)]
            else:
                classic[(key[0], key[1], key[2])] = [durations, duration_sum, kept]
            if sum(requests):
                _add_histogram(request, values, self._size_les, requests, request_sum)
            if sum(responses):
                _add_histogram(response, values, self._size_les, responses, response_sum)
        totals: dict[tuple[str, str], int] = {}
        for (method, path, status), (counts, total, kept) in classic.items():
            values = [method, path, status, *self._static]
            _add_histogram(duration, values, self._les, counts, total, kept)
            totals[(method, status)] = totals.get((method, status), 0) + sum(counts)
        for (method, status), n in totals.items():
            t.cast(CounterMetricFamily, families[2]).add_metric([method, status, *self._static], n)
        return families


class Recorder:
    """One request series and in-flight group, bound: :meth:`RequestStats.record` in one call.

    For the receivers' common case (a request without a span, recorded in
    full): the series is not looked up by its five labels, which with the
    call that did it cost about a third of the extension's instructions per
    request (bench/bench_instructions.py).
    """

    __slots__ = ("_cells", "_finished", "_pending", "_stats")

    def __init__(self, stats: RequestStats, cells: _Cells, group: Group) -> None:
        self._stats = stats
        self._cells = cells
        self._pending = cells.pending  # folded in place, never replaced
        self._finished = group.finished

    def add(self, duration: float, request_size: int | None, response_size: int | None) -> None:
        pending = self._pending
        pending.append((duration, request_size, response_size, None))
        next(self._finished)
        if len(pending) > _FOLD_AT:
            self._stats.fold_some(self._cells)


def _request_families(classic: bool, static: tuple[str, ...]) -> list[Metric]:
    """The request histograms (and classic count), empty: duration first, sizes last."""
    families: list[Metric]
    if classic:
        families = [
            HistogramMetricFamily(
                CLASSIC_DURATION,
                HELP[CLASSIC_DURATION],
                labels=["method", "path", "status", *static],
                unit="seconds",
            ),
            CounterMetricFamily(
                CLASSIC_COUNT,
                HELP[CLASSIC_COUNT],
                labels=["method", "status", *static],
            ),
        ]
    else:
        families = [
            HistogramMetricFamily(
                DURATION,
                HELP[DURATION],
                labels=[*HTTP_LABELS, *static],
                unit="seconds",
            )
        ]
    for name in (REQUEST_SIZE, RESPONSE_SIZE):
        families.append(
            HistogramMetricFamily(name, HELP[name], labels=[*HTTP_LABELS, *static], unit="bytes")
        )
    return families


_OVERFLOW_KEY: RequestKey = (labels.OVERFLOW,) * 5


def _add_histogram(
    family: Metric,
    values: list[str],
    les: list[str],
    counts: list[int],
    total: float,
    kept: list[_Kept | None] | None = None,
) -> None:
    if isinstance(family, _Rows):
        family.rows.append(_Row(tuple(values), counts, total, kept))
        return
    cumulative = 0
    buckets: list[t.Any] = []
    for i, (le, count) in enumerate(zip(les, counts, strict=True)):
        cumulative += count
        exemplar = None if kept is None else kept[i]
        if exemplar is None:
            buckets.append((le, cumulative))
        else:
            buckets.append((le, cumulative, Exemplar(*_exemplar(exemplar))))
    t.cast(HistogramMetricFamily, family).add_metric(values, buckets, total)


def _latest(a: _Kept | None, b: _Kept | None) -> _Kept | None:
    if a is None or (b is not None and b[3] > a[3]):
        return b
    return a


def multiprocess() -> bool:
    """Whether prometheus_client writes its values to ``PROMETHEUS_MULTIPROC_DIR``.

    Decided by the client when it was first imported, from the environment then.
    """
    return values.ValueClass is not values.MutexValue


#: The lock scrapes share and compaction holds alone, in the multiprocess directory.
LOCK_FILE = ".flask-signal-metrics.lock"

#: How long a compaction, in the server's master, waits for the lock before
#: leaving the dead process's files for the next one.
_COMPACT_WAIT = 0.05

#: The longest sleep between two tries of the lock.
_LOCK_PAUSE = 0.05


#: The file type of the in-flight gauge: ``livesum``, so that a dead
#: worker's requests stop counting once :func:`process_died` removed its file.
_LIVE = "gauge_livesum"


def _doubles(file: MmapedDict) -> memoryview[float]:
    """The file's map as native doubles: how the client packs values and timestamps."""
    return memoryview(file._m).cast("d")


class FileGroup:
    """The requests of one (method, scheme) in multiprocess mode.

    ``next(group.started)`` counts one in flight, the receivers' one start
    call as on :class:`Group`; :meth:`FileRequestStats.record` counts it out.
    """

    __slots__ = ("key", "seen", "started", "value")

    def __init__(self, key: str) -> None:
        #: The in-flight value's key in this process's file.
        self.key = key
        self.started = self
        #: The value, and the process's table it was made in (see
        #: _FileSeries): read only while ``seen`` is this process's.
        self.seen: dict[str, _Value] | None = None
        self.value: _Value

    def __iter__(self) -> FileGroup:
        return self

    def __next__(self) -> int:
        lock = _FILES.lock
        lock.acquire()  # not ``with``: half its instructions, on every request
        try:
            value = self.value if self.seen is _FILES.values else self.live()
            value.view[value.index] = value.number = value.number + 1.0  # see _Value
        finally:
            lock.release()
        return 0

    def live(self) -> _Value:
        """This process's in-flight value (hold the files' lock)."""
        if self.seen is not _FILES.values:
            self.value = _FILES.value(_LIVE, self.key)
            self.seen = _FILES.values
        return self.value


#: A file histogram's keys: one per bucket (per bucket, not cumulative, as
#: the client's histogram files are), and its sum's.
_FileKeys = tuple[list[str], str]


class _Value:
    """One value in this process's file: its number and where to write it.

    Added to, and written through, with one line, holding the files' lock::

        value.view[value.index] = value.number = value.number + amount

    inline where it is used (a call costs 400 instructions a value). A value
    is one aligned double in the map, stored whole (a memoryview's item
    assignment copies the 8 bytes at once, never zeroing first as
    ``struct.pack_into`` does), so a reader never sees half a value; its
    timestamp stays the 0.0 the client wrote when it made the key.
    """

    __slots__ = ("index", "number", "view")

    def __init__(self, number: float, view: memoryview[float] | _Through, index: int) -> None:
        self.number = number
        #: The file's map as doubles, or a :class:`_Through`; the value's index in it.
        self.view = view
        self.index = index


class _Through:
    """Stands in for a file's map where values cannot be written into it.

    Each value goes through ``MmapedDict.write_value``, slower but right.
    """

    __slots__ = ("_file", "_keys")

    def __init__(self, file: MmapedDict) -> None:
        self._file = file
        self._keys: list[str] = []

    def index(self, key: str) -> int:
        self._keys.append(key)
        return len(self._keys) - 1

    def __setitem__(self, index: int, number: float) -> None:
        self._file.write_value(self._keys[index], number, 0.0)  # type: ignore[no-untyped-call]


#: A file histogram's values: per bucket, and its sum.
_HistogramValues = tuple[list[_Value], _Value]


class _ProcessFiles:
    """This process's files for the request and render metrics, in prometheus_client's format.

    prometheus_client's multiprocess values each take one process-wide lock,
    look up the pid and write the file on every increment: about ten per
    request, 84 000 of the 199 000 instructions the extension added to the
    demo's request in a worker (``bench/bench_instructions.py --bench demo``).
    Here a request takes one lock when it starts (in flight) and one when it
    is recorded, and writes its values into files of their own,
    ``<type>_requests_<pid>.db``, made by the client's own file code
    (``MmapedDict``, ``mmap_key``), which the client's collector and
    :func:`compact` read like the client's. Each value is in the file as
    soon as its request is recorded: a SIGKILLed worker loses no completed
    request.

    A value's bytes are written straight into the file's map at the position
    ``MmapedDict`` gave its key when it made it (its ``_m`` and
    ``_positions``), through a memoryview of the map as doubles:
    ``MmapedDict.write_value`` costs 2 800 instructions a value, a slice
    assignment of the packed bytes 2 400 in a loop, an item of the view 780;
    and the request's metrics hold their :class:`_Value` objects, so a write
    looks nothing up. When a file grows the client maps it anew: its values
    move to a view of the new map, and the old view is let go, so the old
    map and its descriptor are freed.
    ``tests/test_prometheus.py`` checks, on the installed client, that it
    reads back what is written so, also after the file grew; and each
    process checks it once on a scratch file (:func:`_writes_directly`)
    before it writes so: where a client release moved those attributes or
    the layout, every value goes through ``MmapedDict.write_value`` instead,
    slower but right.
    """

    def __init__(self) -> None:
        self._files: dict[str, MmapedDict] = {}
        #: By file type: its current map as doubles.
        self._views: dict[str, memoryview[float]] = {}
        self.forget()

    def forget(self) -> None:
        """Start empty: at import, and in a forked child (the parent's files are its own).

        The files open here are closed: in a child, that closes only its copies.
        A new :attr:`values` table tells the metrics holding values of the
        parent's (their ``seen``) to make their own.
        """
        views, files = self._views, self._files
        # The new lock and tables first: whatever letting go of the old
        # ones does, this process records into files of its own.
        self.lock = threading.Lock()
        self._files = {}
        self._views = {}
        #: By file type: where values that cannot be written into the map go.
        self._through: dict[str, _Through] = {}
        #: Called once, when this process opens its first file (records its first value).
        self.on_first_record: list[t.Callable[[], None]] = []
        #: Each value of this process, by its file key.
        self.values: dict[str, _Value] = {}
        #: Whether values go straight into the maps (checked at the first file).
        self._direct: bool | None = None
        for view in views.values():
            view.release()  # a map with views cannot be closed
        for file in files.values():
            try:
                file.close()  # type: ignore[no-untyped-call]
            except BufferError:
                # A view that another thread was making when this process
                # forked is in no table: its map stays mapped; the file closes.
                with contextlib.suppress(Exception):
                    file._f.close()

    def value(self, typ: str, key: str) -> _Value:
        """The value of ``key`` in the ``typ`` file, made if new (hold :attr:`lock`)."""
        found = self.values.get(key)
        if found is None:
            file = self._files.get(typ) or self._open(typ)
            number = file.read_value(key)[0]  # type: ignore[no-untyped-call]  # makes it
            position = file._positions[key] if self._direct else -1
            if position >= 0 and position % 8 == 0:
                found = _Value(number, self._view(typ, file), position // 8)
            else:
                through = self._through.get(typ) or self._through.setdefault(typ, _Through(file))
                found = _Value(number, through, through.index(key))
            self.values[key] = found
        return found

    def _view(self, typ: str, file: MmapedDict) -> memoryview[float]:
        """The view of the file's current map (hold :attr:`lock`).

        Making a value may grow the file, which the client then maps anew:
        the file's values move to a view of the new map (every write holds
        the lock), and the old view is released.
        """
        old = self._views.get(typ)
        if old is not None and old.obj is file._m:
            return old
        view = self._views[typ] = _doubles(file)
        if old is not None:
            for value in self.values.values():
                if value.view is old:
                    value.view = view
            old.release()
        return view

    def numbers(self) -> dict[str, float]:
        """Each value's number, by its file key (takes :attr:`lock`)."""
        with self.lock:
            return {key: value.number for key, value in self.values.items()}

    def histogram(self, keys: _FileKeys) -> _HistogramValues:
        """A histogram's values, all made in the file at once, as the client's are."""
        buckets, total = keys
        return [self.value("histogram", key) for key in buckets], self.value("histogram", total)

    def _open(self, typ: str) -> MmapedDict:
        directory = _multiprocess_dir()
        if self._direct is None:
            self._direct = _writes_directly(directory)
        path = os.path.join(directory, f"{typ}_requests_{os.getpid()}.db")
        file = self._files[typ] = MmapedDict(path)  # type: ignore[no-untyped-call]
        starts, self.on_first_record = self.on_first_record, []
        for start in starts:
            start()
        return file


def _writes_directly(directory: str) -> bool:
    """Whether a value assigned into a ``MmapedDict``'s map is what the client reads.

    Tried on a scratch file that no collector reads (not ``*.db``), removed after.
    """
    path = os.path.join(directory, f"probe_{os.getpid()}.tmp")
    probe = None
    try:
        probe = MmapedDict(path)  # type: ignore[no-untyped-call]
        probe.read_value("probe")  # type: ignore[no-untyped-call]  # makes the key
        position = probe._positions["probe"]
        with _doubles(probe) as view:
            view[position // 8] = 1.5
        read = MmapedDict.read_all_values_from_file(path)  # type: ignore[no-untyped-call]
        return [(key, value) for key, value, _, _ in read] == [("probe", 1.5)]
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            if probe is not None:
                probe.close()  # type: ignore[no-untyped-call]
        with contextlib.suppress(OSError):
            os.remove(path)


_FILES = _ProcessFiles()
os.register_at_fork(after_in_child=_FILES.forget)


class _FileSeries:
    """One request series: its values' file keys, made once, and this process's values.

    The values are made in the process that records (``seen`` is the table
    they were made in): a forked worker makes its own, in its own files.
    """

    __slots__ = ("counter", "duration", "request", "response", "seen", "values")

    def __init__(
        self, duration: _FileKeys, request: _FileKeys, response: _FileKeys, counter: str | None
    ) -> None:
        self.duration = duration
        self.request = request
        self.response = response
        #: The classic request counter's key (classic naming only).
        self.counter = counter
        self.seen: dict[str, _Value] | None = None
        #: [duration, request size, response size, classic counter]; a size
        #: histogram is made at its first known size (a stream's has none).
        self.values: list[t.Any] = []

    def resolve(self) -> list[t.Any]:
        """This process's values (hold the files' lock)."""
        files = _FILES
        counter = None if self.counter is None else files.value("counter", self.counter)
        self.values = [files.histogram(self.duration), None, None, counter]
        self.seen = files.values
        return self.values

    def sized(self, index: int) -> _HistogramValues:
        """The request (1) or response (2) size histogram's values (hold the files' lock)."""
        found = _FILES.histogram(self.request if index == 1 else self.response)
        self.values[index] = found
        return found


class FileRequestStats(_RequestMetrics):
    """The request metrics in multiprocess mode, written to this process's files.

    ``MultiProcessCollector`` sums every process's files at scrape time. Same
    names, labels, help and cap as :class:`RequestStats` (no exemplars:
    prometheus_client keeps none in files); the in-flight gauge is a
    ``livesum`` gauge in a file of its own, which :func:`process_died`
    removes with a dead worker's. As a collector it reads this process's own
    values, which the OTLP bridge exports (``/metrics`` reads every file).
    """

    def __init__(self, **options: t.Any) -> None:
        super().__init__(**options)
        self._series: dict[RequestKey, _FileSeries] = {}
        #: (method, scheme) -> FileGroup; read directly on the request path.
        self.groups: dict[tuple[str, str], FileGroup] = {}

    def group(self, method: str, scheme: str) -> FileGroup:
        found = self.groups.get((method, scheme))
        if found is None:
            key = mmap_key(
                ACTIVE, ACTIVE, [*ACTIVE_LABELS, *self._static_names],
                [method, scheme, *self._static], HELP[ACTIVE],
            )  # fmt: skip
            with self._lock:
                found = self.groups.setdefault((method, scheme), FileGroup(key))
        return found

    def record(
        self,
        key: RequestKey,
        group: FileGroup | None,
        duration: float,
        request_size: int | None,
        response_size: int | None,
        exemplar: TraceIds | None = None,
    ) -> None:
        series = self._series.get(key) or _capped(
            self._series, key, self._lock, self._cap, self._overflowed, self._keys
        )
        FileRecorder(self, series, group).add(duration, request_size, response_size)

    def recorder(self, key: RequestKey, group: FileGroup) -> FileRecorder | None:
        """What :meth:`record` does for ``key`` and ``group``, bound: None if ``key`` overflowed."""
        series = self._series.get(key)
        return None if series is None else FileRecorder(self, series, group)

    def collect(self) -> list[Metric]:
        families = self._families()
        active, duration, request, response = families[0], families[1], families[-2], families[-1]
        with self._lock:
            groups = list(self.groups.items())
            series = list(self._series.items())
        values = _FILES.numbers()
        static = self._static
        for (method, scheme), group in groups:
            t.cast(GaugeMetricFamily, active).add_metric(
                [method, scheme, *static], values.get(group.key, 0.0)
            )
        done: set[str] = set()  # classic: several series share a duration and a count
        for key, keys in series:
            if keys.duration[1] in values and keys.duration[1] not in done:
                done.add(keys.duration[1])
                labels = [*key[:3], *static] if self._classic else [*key, *static]
                _add_histogram(duration, labels, self._les, *_read(values, keys.duration))
            if keys.counter is not None and keys.counter in values and keys.counter not in done:
                done.add(keys.counter)
                count = t.cast(CounterMetricFamily, families[2])
                count.add_metric([key[0], key[2], *static], values.get(keys.counter, 0.0))
            for sizes, file_keys in ((request, keys.request), (response, keys.response)):
                if file_keys[1] in values:  # a size was known
                    _add_histogram(
                        sizes, [*key, *static], self._size_les, *_read(values, file_keys)
                    )
        return families

    def _keys(self, key: RequestKey) -> _FileSeries:
        """The keys prometheus_client's own Histogram and Counter would write."""
        values = (*key, *self._static)
        labels = (*HTTP_LABELS, *self._static_names)
        count = None
        if self._classic:
            method, path, status = key[0], key[1], key[2]
            duration = _histogram_keys(
                CLASSIC_DURATION, ("method", "path", "status", *self._static_names),
                (method, path, status, *self._static), self._les, HELP[CLASSIC_DURATION],
            )  # fmt: skip
            count_labels = ["method", "status", *self._static_names]
            count = mmap_key(
                CLASSIC_COUNT, CLASSIC_COUNT + "_total", count_labels,
                [method, status, *self._static], HELP[CLASSIC_COUNT],
            )  # fmt: skip
        else:
            duration = _histogram_keys(DURATION, labels, values, self._les, HELP[DURATION])
        request = _histogram_keys(REQUEST_SIZE, labels, values, self._size_les, HELP[REQUEST_SIZE])
        response = _histogram_keys(
            RESPONSE_SIZE, labels, values, self._size_les, HELP[RESPONSE_SIZE]
        )
        return _FileSeries(duration, request, response, count)


class FileRecorder:
    """One request series and in-flight group, bound: :meth:`FileRequestStats.record`.

    Made once per series and status for the receivers' one-step path, and
    for each request recorded the whole way.
    """

    __slots__ = ("_bounds", "_group", "_series", "_size_bounds")

    def __init__(
        self, stats: FileRequestStats, series: _FileSeries, group: FileGroup | None
    ) -> None:
        self._bounds = stats._bounds
        self._size_bounds = stats._size_bounds
        self._series = series
        self._group = group

    def add(self, duration: float, request_size: int | None, response_size: int | None) -> None:
        """Write one request's values to this process's files."""
        files = _FILES
        lock = files.lock
        lock.acquire()  # not ``with``: half its instructions, on every request
        try:
            series = self._series
            values = series.values if series.seen is files.values else series.resolve()
            # Each value written inline (see _Value): through a list of
            # writes and a loop, 450 instructions a value more; a call, 400.
            buckets, total = values[0]
            value = buckets[bisect_left(self._bounds, duration)]
            value.view[value.index] = value.number = value.number + 1.0
            total.view[total.index] = total.number = total.number + duration
            if request_size is not None:
                buckets, total = values[1] or series.sized(1)
                value = buckets[bisect_left(self._size_bounds, request_size)]
                value.view[value.index] = value.number = value.number + 1.0
                if request_size:  # an empty body adds nothing to the sum: no write
                    total.view[total.index] = total.number = total.number + request_size
            if response_size is not None:
                buckets, total = values[2] or series.sized(2)
                value = buckets[bisect_left(self._size_bounds, response_size)]
                value.view[value.index] = value.number = value.number + 1.0
                if response_size:
                    total.view[total.index] = total.number = total.number + response_size
            value = values[3]
            if value is not None:
                value.view[value.index] = value.number = value.number + 1.0
            group = self._group
            if group is not None:
                value = group.value if group.seen is files.values else group.live()
                value.view[value.index] = value.number = value.number - 1.0
        finally:
            lock.release()


def _histogram_keys(
    name: str, labels: cabc.Sequence[str], values: cabc.Sequence[str], les: list[str], doc: str
) -> _FileKeys:
    """The keys prometheus_client's own Histogram writes for one series."""
    buckets = [mmap_key(name, name + "_bucket", [*labels, "le"], [*values, le], doc) for le in les]
    return buckets, mmap_key(name, name + "_sum", list(labels), list(values), doc)


def _read(values: dict[str, float], keys: _FileKeys) -> tuple[list[int], float]:
    """A file histogram's per-bucket counts and sum, from this process's values."""
    buckets, total = keys
    return [int(values.get(key, 0.0)) for key in buckets], values.get(total, 0.0)


_H = t.TypeVar("_H", bound="FileHistogram")


def histogram(
    name: str,
    documentation: str,
    labelnames: cabc.Sequence[str],
    buckets: cabc.Sequence[float],
    registry: CollectorRegistry,
    unit: str = "",
) -> Histogram | FileHistogram:
    """A histogram of the extension's (templates, streams, declared signals).

    prometheus_client's own in one process; in multiprocess mode a
    :class:`FileHistogram`, written as the request metrics are.
    """
    if multiprocess():
        return FileHistogram(name, documentation, labelnames, buckets, registry, unit)
    return Histogram(
        name, documentation, tuple(labelnames), registry=registry, buckets=buckets, unit=unit
    )


class FileHistogram(Collector):
    """A histogram in this process's files, for :class:`Family` in multiprocess mode.

    Made by :func:`histogram`. The client's Histogram in multiprocess mode
    takes its values' lock, checks the pid and calls ``write_value`` for the
    bucket and for the sum, 17 300 instructions an observation (valgrind),
    the largest part of a render's cost in a worker; this writes both as the
    request metrics do (:class:`_Value`), in the same files and format, for
    4 900. Like the client's, a labelled one makes its series with
    ``labels()``, an unlabelled one is its own; as a collector it reads this
    process's values, for the OTLP bridge (``/metrics`` reads every
    process's files).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: cabc.Sequence[str],
        buckets: cabc.Sequence[float],
        registry: CollectorRegistry,
        unit: str = "",
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._unit = unit
        self._bounds = [*buckets, float("inf")]
        self._les = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()
        at_fork(self._forked)
        #: The series made by ``labels()``, by label values.
        self._series: dict[tuple[str, ...], FileHistogram] = {}
        #: This series' file keys (none for the labelled parent).
        self._keys: _FileKeys = ([], "")
        if not self._labelnames:  # its own one series
            self._keys = _histogram_keys(name, (), (), self._les, documentation)
            self._series[()] = self
        #: This process's values, and the table they were made in (see _FileSeries).
        self._seen: dict[str, _Value] | None = None
        self._values: _HistogramValues | None = None
        registry.register(self)

    def _forked(self) -> None:
        self._lock = threading.Lock()  # the series made by labels() use only their parent's

    def labels(self: _H, *values: str) -> _H:
        """The series of these label values (made once; :class:`Family` caches it)."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: {len(self._labelnames)} label values expected")
        values = tuple(map(str, values))  # as the client's labels() makes them
        with self._lock:
            found = self._series.get(values)
            if found is None:
                # Shares the parent's options, lock and series table.
                found = self._series[values] = copy.copy(self)
                found._keys = _histogram_keys(
                    self._name, self._labelnames, values, self._les, self._documentation
                )
        return t.cast(_H, found)

    def observe(self, amount: float) -> None:
        files = _FILES
        lock = files.lock
        lock.acquire()  # not ``with``: half its instructions
        try:
            if self._seen is files.values:
                buckets, total = self._values  # type: ignore[misc]  # made with _seen
            else:
                if not self._keys[1]:  # before anything is written
                    raise ValueError(f"{self._name} has labels: observe a series of labels()")
                buckets, total = self._values = files.histogram(self._keys)
                self._seen = files.values
            value = buckets[bisect_left(self._bounds, amount)]  # see _Value
            value.view[value.index] = value.number = value.number + 1.0
            total.view[total.index] = total.number = total.number + amount
        finally:
            lock.release()

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        with self._lock:
            series = list(self._series.items())
        values = _FILES.numbers()
        for label_values, made in series:
            if made._keys[1] in values:  # observed in this process
                _add_histogram(family, list(label_values), self._les, *_read(values, made._keys))
        return [family]

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            self._name, self._documentation, labels=list(self._labelnames), unit=self._unit
        )


#: The process collector's sample -> our per-worker gauge (set, not added).
WORKER_METRICS = {
    "process_cpu_seconds_total": "flask_worker_cpu_seconds",
    "process_resident_memory_bytes": "flask_worker_resident_memory_bytes",
    "process_virtual_memory_bytes": "flask_worker_virtual_memory_bytes",
    "process_open_fds": "flask_worker_open_fds",
    "process_start_time_seconds": "flask_worker_start_time_seconds",
}


#: Seconds between two copies of a worker's process metrics.
WORKER_INTERVAL = 5.0


class WorkerStats:
    """Each worker's process metrics in multiprocess mode, one series per live worker.

    prometheus_client's process collector cannot be aggregated across
    processes, so each worker copies its figures into ``liveall`` gauges
    (a ``pid`` label each; a dead worker's series go with
    ``mark_process_dead``) from a daemon thread, every :data:`WORKER_INTERVAL` seconds.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauges = {
            sample: Gauge(
                name,
                f"This worker's {sample} (process metrics per worker, multiprocess mode).",
                registry=registry,
                multiprocess_mode="liveall",
            )
            for sample, name in WORKER_METRICS.items()
        }
        self._process = ProcessCollector(registry=None)

    def refresh(self) -> None:
        for metric in self._process.collect():
            for sample in metric.samples:
                gauge = self._gauges.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)

    def start(self) -> None:
        """Refresh now and from a daemon thread; in a fork, from its first recorded value."""
        self.refresh()
        self._start_thread()
        # gunicorn's preload_app forks workers from a process that ran this:
        # threads do not survive a fork, so each child starts its own.
        at_fork(self._forked)

    def _forked(self) -> None:
        # A forked child is a worker (gunicorn's preload_app) or a helper a
        # worker forked (multiprocessing): only a worker records requests.
        # A helper's series would outlive it, as nothing marks it dead, so
        # the thread starts with the child's first recorded value. (Runs
        # after _FILES.forget, which empties the list: registered later.)
        _FILES.on_first_record.append(self._start_thread)

    def _start_thread(self) -> None:
        # The child's first refresh is the thread's, not the fork handler's:
        # the client's lock may have been held by another thread at the
        # fork, and then only this thread waits, not the child itself.
        threading.Thread(
            target=self._loop, name="flask-signal-metrics:workers", daemon=True
        ).start()

    def _loop(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # a vanished /proc entry: try again next time
                logger.debug("refreshing worker metrics failed", exc_info=True)
            time.sleep(WORKER_INTERVAL)


def exposed(
    collectors: cabc.Sequence[Collector], lock_timeout: float = LOCK_TIMEOUT
) -> list[Collector]:
    """What a scrape reads: the collectors, or in multiprocess mode every worker's files.

    In multiprocess mode the live registries hold only this worker's values;
    every scrape sums the directory's files as prometheus_client's
    ``MultiProcessCollector`` does. The files are read under a shared lock,
    so that :func:`compact` never moves counts under a scrape.

    :raises LockUnavailable: the lock was not had within ``lock_timeout``
        seconds, or its file cannot be opened.
    """
    if not multiprocess():
        return list(collectors)
    directory = _multiprocess_dir()
    with _directory_lock(directory, fcntl.LOCK_SH, lock_timeout):
        metrics = _read_directory(directory)
    if REGISTRY not in collectors:
        # The files hold every process's metrics, those of the default
        # registry (the user's module-level ones) too: serve_default_registry
        # off keeps the families these collectors define.
        names = {metric.name for collector in collectors for metric in collector.collect()}
        metrics = [metric for metric in metrics if metric.name in names]
    return [_Collected(metrics)]


def _read_directory(directory: str) -> list[Metric]:
    """Every process's values in ``directory``, summed as ``MultiProcessCollector`` does.

    Its files, but those still empty: a process makes its file by opening it
    (empty) and then sizing it, and prometheus_client fails on an empty file
    (``struct.error``). A scrape between the two, as gunicorn boots a worker
    under load, answered 500 (tests/test_multiprocess.py on a loaded
    machine). An empty file holds no value (tests/test_prometheus.py).
    """
    files = []
    for path in glob.glob(os.path.join(directory, "*.db")):
        with contextlib.suppress(FileNotFoundError):  # a live gauge's, removed meanwhile
            if os.path.getsize(path):
                files.append(path)
    return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]


class _Collected(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


def _multiprocess_dir() -> str:
    return os.environ["PROMETHEUS_MULTIPROC_DIR"]


class LockUnavailable(Exception):
    """The multiprocess directory's lock was not had in time, or its file cannot be opened.

    Whoever can open the lock file can hold it for as long as they like, so
    it is never waited for without a bound: a scrape is refused (503) and a
    compaction left for later.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        #: ``lock_timeout`` or ``lock_error``, the label of the refusals' count.
        self.reason = reason


@contextlib.contextmanager
def _directory_lock(path: str, operation: int, timeout: float) -> t.Iterator[None]:
    """Hold the directory's lock (``LOCK_SH`` or ``LOCK_EX``), waiting at most ``timeout`` s.

    :raises LockUnavailable: not had in time, or the lock file cannot be opened.
    """
    try:
        fd = _open_lock(path)
    except OSError as e:
        raise LockUnavailable(
            f"cannot open {os.path.join(path, LOCK_FILE)} ({e.strerror or e})", "lock_error"
        ) from e
    try:
        _acquire(fd, operation, timeout)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock(directory: str) -> int:
    """The lock file's descriptor, made readable by this user only if it is new.

    A symbolic link at its path is refused (``ELOOP``), not followed.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(os.path.join(directory, LOCK_FILE), flags, 0o600)


def _acquire(fd: int, operation: int, timeout: float) -> None:
    """``flock`` without blocking, tried again after short sleeps until ``timeout`` has passed.

    A blocking ``flock`` has no timeout: it waits for as long as any other
    holder of the file keeps it.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockUnavailable(
                f"the multiprocess directory's lock was held elsewhere for {timeout:g} s"
                " (a compaction, or another process that opened the lock file)",
                "lock_timeout",
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, _LOCK_PAUSE)


def count_refused(reason: str) -> None:
    """Count one scrape refused for ``reason`` (a :class:`LockUnavailable`'s).

    Counted per answer, not per render: scrapes that joined one refused
    render are each refused. The count never turns the refusal into another
    error.
    """
    with contextlib.suppress(Exception):
        _refused_counter().labels(reason).inc()


@functools.cache
def _refused_counter() -> Counter:
    """The count of refused scrapes, made at most once a process (multiprocess mode only).

    In multiprocess mode a counter writes this process's file, which every
    scrape sums, registered or not: one counter serves every app of the
    process and a process with none (the master serving start_metrics_server).
    """
    counter = Counter(SCRAPES_REFUSED, HELP[SCRAPES_REFUSED], ("reason",), registry=None)
    for reason in ("lock_timeout", "lock_error"):
        counter.labels(reason)  # exported as 0 before the first refusal
    return counter


def check_directory() -> None:
    """Refuse a multiprocess directory that another user can write; at init, in multiprocess mode.

    Whoever can write the directory can plant the lock file (and hold it:
    every scrape refused) or a file named like a worker's (counts of their
    own, or a symbolic link that prometheus_client's files follow). So a
    directory every user can write, sticky or not, or one another user owns,
    is refused. One its group can write is allowed with a warning: the
    group is a choice of who shares it (and a umask of 002 makes every new
    directory so). A lock file an earlier release left readable to all is
    made this user's only.

    :raises ValueError: naming ``PROMETHEUS_MULTIPROC_DIR`` and the fix.
    """
    directory = _multiprocess_dir()
    key = f"PROMETHEUS_MULTIPROC_DIR is {directory!r}"
    fix = (
        f"make it private (chmod 700 {directory}), or let examples/gunicorn.conf.py make"
        " one (tempfile.mkdtemp: a random name, mode 0700)"
    )
    try:
        info = os.stat(directory)
    except OSError as e:
        raise ValueError(
            f"{key}, which cannot be used ({e.strerror or e}); create it private to this"
            f" user before the app starts (mkdir -m 700 {directory})."
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{key}, which is not a directory; point it at a private directory.")
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        raise ValueError(
            f"{key}, which every user can write (mode {mode:o}): any of them could hold"
            f" its lock (stopping every scrape) or plant files in it; {fix}."
        )
    if info.st_uid not in (os.geteuid(), 0):
        raise ValueError(
            f"{key}, owned by uid {info.st_uid}, not by this process's user"
            f" ({os.geteuid()}): its owner could hold its lock or plant files in it;"
            " use a directory this user made, mode 0700."
        )
    if mode & stat.S_IWGRP:
        logger.warning(
            "flask-signal-metrics: %s, which its group (gid %d) can write (mode %o):"
            " every member could hold its lock (stopping every scrape) or plant files"
            " in it. Unless they all may, chmod g-w %s.",
            key,
            info.st_gid,
            mode,
            directory,
        )
    _check_lock_file(directory, key)


def _check_lock_file(directory: str, key: str) -> None:
    """A lock file already there must be this user's; it is made at the first scrape if not."""
    path = os.path.join(directory, LOCK_FILE)
    if not os.path.lexists(path):
        return
    try:
        fd = _open_lock(directory)
    except OSError as e:
        what = "a symbolic link" if os.path.islink(path) else f"unusable ({e.strerror or e})"
        raise ValueError(
            f"{key}, whose lock file {path} is {what}; remove it, and keep the"
            " directory private to this user (mode 0700)."
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid not in (os.geteuid(), 0):
            raise ValueError(
                f"{key}, whose lock file {path} is not a file of this user's"
                f" (uid {info.st_uid}); remove it, and keep the directory private"
                " to this user (mode 0700)."
            )
        if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


#: How the values of a dead process merge into the compacted file, by gauge mode.
_MERGE: dict[str, t.Callable[[float, float], float]] = {
    "sum": lambda a, b: a + b,
    "max": max,
    "min": min,
}


def compact(pid: int, wait: float = _COMPACT_WAIT) -> int:
    """Fold a dead process's files into one compacted file per type; returns the files folded.

    prometheus_client reads one file per process that ever lived, so the time
    of a scrape grows with every worker restart (``bench/bench_scrape.py``
    measures it). Counters, histograms and summaries are sums, and ``sum``,
    ``max`` and ``min`` gauges merge by their mode, so folding a dead
    process's values into ``<type>_compacted.db`` keeps every count: a scrape
    reads the same totals from fewer files. ``live*`` gauges are removed by
    :func:`process_died`; ``all`` and ``mostrecent`` gauges are left as they
    are. Runs under the directory's exclusive lock, which scrapes share.

    :raises LockUnavailable: the lock was not had within ``wait`` seconds.
    """
    directory = _multiprocess_dir()
    with _directory_lock(directory, fcntl.LOCK_EX, wait):
        return _compact(directory, pid)


def _compact(directory: str, pid: int) -> int:
    """:func:`compact`'s folding (hold the directory's exclusive lock)."""
    folded = 0
    for file in glob.glob(os.path.join(directory, f"*_{pid}.db")):
        if not os.path.getsize(file):  # killed while making it: no value
            os.remove(file)
            continue
        parts = os.path.basename(file)[:-3].split("_")
        if parts[0] == "gauge":
            if parts[1] not in _MERGE:
                continue
            merge, target = _MERGE[parts[1]], f"gauge_{parts[1]}_compacted.db"
        else:
            merge, target = _MERGE["sum"], f"{parts[0]}_compacted.db"
        path = os.path.join(directory, target)
        # A key new to the compacted file takes the dead process's value
        # as it is: merged with the 0 a new key reads as, a ``min``
        # gauge of 5 became 0.
        known = _keys(path)
        compacted = MmapedDict(path)  # type: ignore[no-untyped-call]
        try:
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(file):  # type: ignore[no-untyped-call]
                if key in known:  # a file's keys are unique: no key comes twice
                    value = merge(compacted.read_value(key)[0], value)  # type: ignore[no-untyped-call]
                compacted.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
        finally:
            compacted.close()  # type: ignore[no-untyped-call]
        os.remove(file)
        folded += 1
    return folded


def _keys(path: str) -> set[str]:
    """The keys a values file holds (none if it does not exist or is still empty)."""
    if not os.path.exists(path) or not os.path.getsize(path):
        return set()
    return {key for key, _, _, _ in MmapedDict.read_all_values_from_file(path)}  # type: ignore[no-untyped-call]


#: Dead processes whose files are not compacted yet: the lock was held elsewhere.
_UNCOMPACTED: set[int] = set()


def process_died(pid: int) -> None:
    """What a server's hook calls when a worker exits: mark it dead, then compact.

    It runs in the server's master (gunicorn's ``child_exit``), which
    replaces dead workers only once it returns and which an exception stops:
    the compaction never waits longer than a moment and never raises. Files
    it could not fold now are folded at a later call; until then every
    scrape sums them as they are, so no count is wrong meanwhile.
    """
    mark_process_dead(pid)  # type: ignore[no-untyped-call]
    with contextlib.suppress(FileNotFoundError):  # ours, which mark_process_dead does not know
        os.remove(os.path.join(_multiprocess_dir(), f"{_LIVE}_requests_{pid}.db"))
    _UNCOMPACTED.add(pid)
    try:
        with _directory_lock(_multiprocess_dir(), fcntl.LOCK_EX, _COMPACT_WAIT):
            for dead in sorted(_UNCOMPACTED):
                _UNCOMPACTED.discard(dead)  # first: a file that fails to fold is not retried
                _compact(_multiprocess_dir(), dead)
    except LockUnavailable as e:
        logger.warning(
            "flask-signal-metrics: the files of %d dead worker(s) are left as they are,"
            " to be compacted when the next worker exits (scrapes still count them): %s.",
            len(_UNCOMPACTED),
            e,
        )
    except Exception:
        logger.exception("flask-signal-metrics: compacting a dead worker's files failed")


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
            _refused_counter()

        request_families = [REQUEST_SIZE, RESPONSE_SIZE]
        request_families.append(CLASSIC_DURATION if naming == "classic" else DURATION)
        overflowed = [self._overflow.labels(n, *self._static) for n in request_families]
        request_options: dict[str, t.Any] = {
            "naming": naming,
            "buckets": buckets,
            "size_buckets": size_buckets,
            "static_labels": static_labels,
            "max_series": max_series,
            "overflowed": overflowed,
        }
        self.requests: RequestStats | FileRequestStats
        self.workers: WorkerStats | None = None
        if multiprocess():
            # Worker processes share numbers only through prometheus_client's
            # files: each writes its own (FileRequestStats).
            self.workers = WorkerStats(registry)
            self.requests = FileRequestStats(**request_options)
        else:
            self.requests = RequestStats(**request_options)
        registry.register(self.requests)
        #: prometheus-flask-exporter's exception counter (classic naming only).
        self.escaped: Family[Counter] | None = None
        if naming == "classic":
            self.escaped = self._counter(
                "flask_http_request_exceptions",
                "Total number of HTTP requests which resulted in an exception",
                ("method", "status"),
            )
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
        info = Gauge(
            "flask_exporter_info" if naming == "classic" else "flask_signal_metrics_info",
            "Version of flask-signal-metrics.",
            ("version", *self._static_names),
            registry=registry,
            multiprocess_mode="max",
        )
        info.labels(version, *self._static).set(1)
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

    def _histogram(
        self, name: str, doc: str, labelnames: tuple[str, ...], buckets: cabc.Sequence[float]
    ) -> Family[Histogram | FileHistogram]:
        names = (*labelnames, *self._static_names)
        return self._family(histogram(name, doc, names, buckets, self.registry, "seconds"), name)

    def _family(self, metric: M, name: str, capped: bool = True) -> Family[M]:
        cap = self._cap if capped else sys.maxsize
        return Family(metric, self._static, cap, self._overflow.labels(name, *self._static))

    def _counter(
        self, name: str, doc: str, labelnames: cabc.Sequence[str], capped: bool = True
    ) -> Family[Counter]:
        metric = Counter(name, doc, (*labelnames, *self._static_names), registry=self.registry)
        return self._family(metric, name + "_total", capped)


class _Union(Collector):
    """Several registries exposed as one (the extension's and the default one).

    :param names: if not empty, only the families with one of these names, or
        with a sample of one of these names (``..._bucket``), as
        prometheus_client's ``name[]`` filter does.
    """

    def __init__(self, collectors: cabc.Sequence[Collector], names: frozenset[str]) -> None:
        self._collectors = collectors
        self._names = names

    def collect(self) -> cabc.Iterable[Metric]:
        for collector in self._collectors:
            for metric in collector.collect():
                if not self._names or self._wanted(metric):
                    yield metric

    def _wanted(self, metric: Metric) -> bool:
        if metric.name in self._names:
            return True
        if isinstance(metric, _Rows):
            return not self._names.isdisjoint(metric.sample_names())
        return any(sample.name in self._names for sample in metric.samples)


def new_registry() -> CollectorRegistry:
    """A registry of the extension's own, so apps and tests never collide."""
    return CollectorRegistry(auto_describe=True)


def default_registry() -> CollectorRegistry:
    """prometheus_client's process-wide registry (process, platform, GC, user metrics)."""
    return REGISTRY


_OPENMETRICS = "application/openmetrics-text"
_TEXT = "text/plain"
_ANY = ("*/*", "text/*")


def render(
    collectors: cabc.Sequence[Collector],
    accepted: cabc.Iterable[str],
    names: cabc.Iterable[str] = (),
    lock_timeout: float = LOCK_TIMEOUT,
) -> tuple[bytes, str]:
    """Encode ``collectors`` in the best format among ``accepted`` media ranges.

    :param accepted: the client's acceptable media ranges with their
        parameters, most preferred first (q=0 already removed).
        ``choose_encoder`` ignores q-values and picks OpenMetrics whenever it is
        listed at all, so the preference order is decided by the caller and
        each range is handed to it alone. Anything it cannot use falls back to
        the Prometheus text format 0.0.4, as the content-negotiation spec says.
    :param names: only these metric families (``/metrics?name[]=...``).
    :param lock_timeout: how long to wait for the multiprocess directory's lock.
    :returns: the body and its ``Content-Type``: what the client's encoder
        writes, the request histograms written by :class:`_HistogramLines`.
    :raises LockUnavailable: in multiprocess mode, the lock was not had in time.
    """
    encoder, content_type = choose_encoder("")
    for media_range in accepted:
        base = media_range.split(";", 1)[0].strip().lower()
        if base in _ANY:
            break
        if base not in (_OPENMETRICS, _TEXT):
            continue
        if base == _OPENMETRICS and not _writable_openmetrics(media_range):
            continue
        try:
            chosen, chosen_type = choose_encoder(media_range)
        except Exception:  # a malformed version= parameter
            continue
        encoder, content_type = chosen, chosen_type
        break
    form = _format(content_type, encoder)
    return _encode(form, _Union(exposed(collectors, lock_timeout), frozenset(names))), content_type


def _writable_openmetrics(media_range: str) -> bool:
    """Whether the OpenMetrics version asked for (none: any) is 1.x, which we write.

    Decided here rather than left to ``choose_encoder``, whose answer for
    other versions differs between client releases.
    """
    for param in media_range.split(";")[1:]:
        name, _, version = param.partition("=")
        if name.strip().lower() == "version":
            return version.strip().split(".")[0] == "1"
    return True


# -- writing the request histograms ---------------------------------------------------
#
# prometheus_client's encoders format every sample anew: its labels sorted,
# escaped and joined, on every scrape. The request histograms, the bulk of a
# large exposition, are written here instead: the client's own encoder writes
# each series' label part once (a series' labels never change), and a render
# formats only the values. Everything else is still the client's to write.
# Why: bench/bench_storm.py --render measures both.


class _Format(t.NamedTuple):
    """The exposition format of a render."""

    content_type: str
    #: prometheus_client's encoder for it.
    encoder: t.Callable[[Collector], bytes]
    #: What the encoder writes after the last family (OpenMetrics' ``# EOF``).
    trailer: bytes
    #: Equal for renders that write alike: the type, and the encoder and its
    #: options; None if they cannot be compared (the client writes everything).
    key: t.Hashable | None


def _format(content_type: str, encoder: t.Callable[[Collector], bytes]) -> _Format:
    options: t.Hashable = encoder
    if isinstance(encoder, functools.partial):  # a new one per call, equal options
        options = (encoder.func, encoder.args, tuple(sorted(encoder.keywords.items())))
    key: t.Hashable | None = (content_type, options)
    try:
        hash(key)
    except TypeError:
        key = None
    return _Format(content_type, encoder, encoder(_Collected([])), key)


#: The format of the :func:`render` under way in this context, if any:
#: request collectors then hand over rows for it (:class:`_Rows`).
_RENDERING: contextvars.ContextVar[_Format | None] = contextvars.ContextVar(
    "flask_signal_metrics_rendering", default=None
)

#: Formats whose lines a request collector keeps; others are the client's to write.
_MAX_FORMATS = 4

#: Series written per chunk: each chunk is one join and one encode, so a
#: render never runs one long C call that holds the GIL.
_CHUNK_SERIES = 500

#: Stands for the ``le`` value in the line the client writes once per series.
_LE = "\ue000"


class _Row(t.NamedTuple):
    """One series of a histogram family, for its :class:`_HistogramLines`."""

    values: tuple[str, ...]
    #: Per bucket, not cumulative.
    counts: list[int]
    total: float
    exemplars: list[_Kept | None] | None


class _SeriesText(t.NamedTuple):
    """One series' lines as the client writes them, less the sample's name and value.

    The same in every family of the same label names: kept once for them all.
    """

    #: A bucket line: its name + ``head`` + its ``le`` + ``tail`` + its value.
    head: str
    tail: str
    #: The ``_count`` and ``_sum`` lines: their name + ``labels`` + the value.
    labels: str


#: By label values: a series' text (None: the client writes it), see :class:`_SeriesText`.
_Texts = dict[tuple[str, ...], "_SeriesText | None"]


class _Rows(Metric):
    """A histogram family whose series :func:`render` writes through their :class:`_HistogramLines`.

    Made only within a render (see :data:`_RENDERING`); it has no samples.
    """

    def __init__(self, family: Metric, lines: _HistogramLines) -> None:
        super().__init__(family.name, family.documentation, family.type, family.unit)
        self.lines = lines
        self.rows: list[_Row] = []

    def sample_names(self) -> tuple[str, ...]:
        """The names its samples would have."""
        if not self.rows:
            return ()
        return (self.name + "_bucket", self.name + "_count", self.name + "_sum")


class _HistogramLines:
    """How one histogram family is written in one format, learnt from the client's encoder.

    Its header, and for each series the text around its values, are what
    prometheus_client writes for them; :meth:`write` adds the values,
    formatted with the client's own ``floatToGoString``. A series whose text
    cannot be split so (a label value holding :data:`_LE`) is written by the
    client.
    """

    def __init__(
        self,
        form: _Format,
        family: Metric,
        labelnames: list[str],
        les: list[str],
        exemplars: bool,
        texts: _Texts,
    ) -> None:
        self._form = form
        self._name = family.name
        self._documentation = family.documentation
        self._unit = family.unit
        self._labelnames = labelnames
        self._les = les
        self._exemplars = exemplars
        self.header = _client_text(form, [self._empty()])
        self._series = texts

    @classmethod
    def probe(
        cls, form: _Format, family: Metric, labelnames: list[str], les: list[str], texts: _Texts
    ) -> _HistogramLines | None:
        """The family's lines in ``form``, or None if the client's output is not as expected.

        Expected: a histogram series is its buckets, then ``_count`` and
        ``_sum``, one line each; the encoder's output for several families is
        that of each, then its trailer; and OpenMetrics writes a bucket's
        exemplar as :func:`_exemplar_text` does.
        """
        if family.type != "histogram":
            return None
        shape = HistogramMetricFamily(family.name, "", labels=labelnames)
        shape.add_metric(["x"] * len(labelnames), [(le, 0) for le in les], 0.0)
        name = family.name
        expected = [name + "_bucket"] * len(les) + [name + "_count", name + "_sum"]
        if [sample.name for sample in shape.samples] != expected:
            return None
        empty = form.encoder(_Collected([family]))
        if not empty.endswith(form.trailer) or len(empty) == len(form.trailer):
            return None
        kept: _Kept = (0xABC, 0xDEF, 0.25, 1_700_000_000.125)
        bucket = Exemplar(*_exemplar(kept))
        line = HistogramMetricFamily(name, "", labels=())
        line.samples.append(Sample(name + "_bucket", {"le": "1.0"}, 0.0, None, bucket))
        text = _client_text(form, [line]).rstrip("\n").rsplit("\n", 1)[-1]
        if text == f'{name}_bucket{{le="1.0"}} 0.0{_exemplar_text(kept)}':
            exemplars = True
        elif text == f'{name}_bucket{{le="1.0"}} 0.0':
            exemplars = False
        else:
            return None
        return cls(form, family, labelnames, les, exemplars, texts)

    def _empty(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            self._name, self._documentation, labels=self._labelnames, unit=self._unit
        )

    def _learn(self, rows: list[_Row]) -> None:
        """The text of the series of ``rows`` not yet known: one encoding for all."""
        new = list(dict.fromkeys(row.values for row in rows if row.values not in self._series))
        if not new:
            return
        family = self._empty()
        name = self._name
        for label_values in new:
            labels = dict(zip(self._labelnames, label_values, strict=True))
            family.samples += [
                Sample(name + "_bucket", {**labels, "le": _LE}, 0.0),
                Sample(name + "_count", labels, 0.0),
                Sample(name + "_sum", labels, 0.0),
            ]
        text = _client_text(self._form, [family])
        lines = text[len(self.header) :].split("\n")
        if not text.startswith(self.header) or len(lines) != 3 * len(new) + 1:
            self._series.update(dict.fromkeys(new))  # each written by the client
            return
        bucket_name, count_name, sum_name = name + "_bucket", name + "_count", name + "_sum"
        for index, label_values in enumerate(new):
            bucket, count, total = lines[3 * index : 3 * index + 3]
            parts = bucket.split(_LE)
            text_labels = count[len(count_name) : -3]  # " 0.0": the value, after its space
            known = None  # the client writes it
            if (
                len(parts) == 2
                and parts[0].startswith(bucket_name)
                and parts[1].endswith(" 0.0")
                and count == count_name + text_labels + "0.0"
                and total == sum_name + text_labels + "0.0"
            ):
                known = _SeriesText(parts[0][len(bucket_name) :], parts[1][:-3], text_labels)
            self._series[label_values] = known

    def write(self, rows: list[_Row], numbers: dict[int, str]) -> cabc.Iterator[bytes]:
        """The family's text, in chunks.

        :param numbers: formatted counts with their newline, by count (many repeat).
        """
        self._learn(rows)
        series = self._series
        les = self._les
        name = self._name
        bucket_name, count_name, sum_name = name + "_bucket", name + "_count", name + "_sum"
        out = [self.header]
        for n, row in enumerate(rows, 1):
            text = series[row.values]
            if text is None:
                out.append(self._by_client(row))
                continue
            counts = [
                numbers.get(c) or numbers.setdefault(c, floatToGoString(c) + "\n")  # type: ignore[no-untyped-call]
                for c in itertools.accumulate(row.counts)
            ]
            bucket_values = counts
            kept = row.exemplars
            if self._exemplars and kept is not None and kept.count(None) != len(kept):
                bucket_values = [
                    value if exemplar is None else value[:-1] + _exemplar_text(exemplar) + "\n"
                    for value, exemplar in zip(counts, kept, strict=True)
                ]
            head, tail = bucket_name + text.head, text.tail
            out += [head + le + tail + value for le, value in zip(les, bucket_values, strict=True)]
            out.append(count_name + text.labels + counts[-1])
            out.append(sum_name + text.labels + floatToGoString(row.total) + "\n")  # type: ignore[no-untyped-call]
            if n % _CHUNK_SERIES == 0:
                yield "".join(out).encode()
                out = []
        yield "".join(out).encode()

    def _by_client(self, row: _Row) -> str:
        family = self._empty()
        _add_histogram(family, list(row.values), self._les, row.counts, row.total, row.exemplars)
        return _client_text(self._form, [family])[len(self.header) :]


def _exemplar(kept: _Kept) -> tuple[dict[str, str], float, float]:
    """A kept exemplar's labels, value and time, as the client's ``Exemplar`` takes them."""
    trace_id, span_id, value, when = kept
    # 32 + 16 hex digits and two short names: 62 runes, always within
    # OpenMetrics' 128, so the encoder can never reject it.
    return {"trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}"}, value, when


def _exemplar_text(kept: _Kept) -> str:
    """A bucket's exemplar as OpenMetrics writes it after the value.

    :meth:`_HistogramLines.probe` checks that the client writes it so.
    """
    trace_id, span_id, value, when = kept
    return (
        f' # {{span_id="{span_id:016x}",trace_id="{trace_id:032x}"}}'
        f" {floatToGoString(value)} {when}"  # type: ignore[no-untyped-call]
    )


def _client_text(form: _Format, metrics: list[Metric]) -> str:
    """What the client's encoder writes for ``metrics``, less its trailer."""
    body = form.encoder(_Collected(metrics))
    return body[: len(body) - len(form.trailer)].decode()


def _encode(form: _Format, union: _Union) -> bytes:
    """The exposition of ``union`` in ``form``: the client's, our rows written by their lines."""
    token = _RENDERING.set(form)
    try:
        metrics = list(union.collect())
    finally:
        _RENDERING.reset(token)
    if not any(isinstance(metric, _Rows) for metric in metrics):
        return form.encoder(_Collected(metrics))
    chunks: list[bytes] = []
    theirs: list[Metric] = []
    numbers: dict[int, str] = {}
    for metric in metrics:
        if not isinstance(metric, _Rows):
            theirs.append(metric)
            continue
        if theirs:
            body = form.encoder(_Collected(theirs))
            chunks.append(body[: len(body) - len(form.trailer)])
            theirs = []
        chunks += metric.lines.write(metric.rows, numbers)
    if theirs:
        chunks.append(form.encoder(_Collected(theirs)))
    else:
        chunks.append(form.trailer)
    return b"".join(chunks)


class SignalStore:
    """The metrics declared on an extension for the app's own signals.

    One registry per extension: the app's signals have any sender, so a send
    made outside any request or app context still knows where to record.
    """

    def __init__(self, registry: CollectorRegistry, max_series: int) -> None:
        self.registry = registry
        self._cap = max_series
        self._families: list[Family[t.Any]] = []
        self._overflow = Counter(
            SIGNAL_OVERFLOW,
            "Recordings of declared signal metrics folded into their overflow series.",
            ("metric",),
            registry=registry,
        )
        self.errors = Counter(
            SIGNAL_ERRORS,
            "Failures while recording a declared signal (the sender went on unharmed).",
            ("signal",),
            registry=registry,
        )
        self.unmatched = Counter(
            "flask_signal_metrics_signal_unmatched",
            "Ends of timed signal pairs without a start (no_start), and starts dropped"
            " unmatched (dropped).",
            ("metric", "reason"),
            registry=registry,
        )

    def counter(
        self, name: str, documentation: str, labelnames: cabc.Sequence[str]
    ) -> Family[t.Any]:
        metric = Counter(name, documentation, tuple(labelnames), registry=self.registry)
        return self._family(metric, name + "_total")

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: cabc.Sequence[str],
        buckets: cabc.Sequence[float],
    ) -> Family[t.Any]:
        metric = histogram(name, documentation, labelnames, buckets, self.registry)
        return self._family(metric, name)

    def cap(self, max_series: int) -> None:
        """Cap the declared metrics, those made and to come, at ``max_series`` label sets."""
        self._cap = max_series
        for family in self._families:
            family._cap = max_series

    def _family(self, metric: M, name: str) -> Family[M]:
        family = Family(metric, (), self._cap, self._overflow.labels(name))
        self._families.append(family)
        return family


# -- reading metrics back (the report command) -------------------------------------


@dataclasses.dataclass
class FamilySummary:
    """One metric family as the report shows it."""

    name: str
    type: str
    #: Distinct label sets (a histogram's buckets, sum and count are one series).
    series: int
    #: Label name -> number of distinct values.
    labels: dict[str, int]
    #: Sum of the samples by label values, for counters (overflow, errors).
    totals: dict[tuple[tuple[str, str], ...], float]


_SERIES_LABELS_IGNORED = {"le", "quantile"}


def summarize(metrics: cabc.Iterable[Metric]) -> list[FamilySummary]:
    """Series and label counts per family, merging families of the same name."""
    by_name: dict[str, tuple[str, set[t.Any], dict[str, set[str]], dict[t.Any, float]]] = {}
    for metric in metrics:
        _, series, values, totals = by_name.setdefault(metric.name, (metric.type, set(), {}, {}))
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            key = tuple(
                sorted((k, v) for k, v in sample.labels.items() if k not in _SERIES_LABELS_IGNORED)
            )
            series.add(key)
            for label, label_value in key:
                values.setdefault(label, set()).add(label_value)
            if metric.type == "counter" and sample.name.endswith("_total"):
                totals[key] = totals.get(key, 0.0) + sample.value
    return [
        FamilySummary(
            name,
            kind,
            len(series),
            {label: len(v) for label, v in sorted(values.items())},
            totals,
        )
        for name, (kind, series, values, totals) in sorted(by_name.items())
    ]


def collect(
    collectors: cabc.Sequence[Collector], lock_timeout: float = LOCK_TIMEOUT
) -> list[Metric]:
    """What ``/metrics`` would serve, as metric families."""
    return list(_Union(exposed(collectors, lock_timeout), frozenset()).collect())


def parse_text(text: str) -> list[Metric]:
    """Metric families from a Prometheus text exposition (a scraped ``/metrics``)."""
    return list(text_string_to_metric_families(text))


def read_multiprocess(path: str) -> list[Metric]:
    """Metric families aggregated from a prometheus_client multiprocess directory."""
    return _read_directory(path)


# -- this process's own values, for the OTLP bridge ----------------------------


@dataclasses.dataclass(frozen=True)
class Reading:
    """One series of this process, in neutral terms (no prometheus_client types).

    Counters and gauges carry ``value``; histograms carry ``value`` (their
    sum), ``count``, the finite ``bounds`` and ``counts`` per bucket (not
    cumulative; the last one is ``+Inf``'s).
    """

    family: str
    kind: str
    documentation: str
    labels: dict[str, str]
    value: float
    count: int = 0
    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    #: Histograms: the buckets' exemplars as (trace id, span id, value, unix
    #: time), ids in hex (single-process mode only: the client keeps none in
    #: multiprocess mode).
    exemplars: tuple[tuple[str, str, float, float], ...] = ()


def readings(registries: cabc.Iterable[CollectorRegistry]) -> list[Reading]:
    """What this process recorded in the extension's registries, series by series.

    They hold this process's values in either mode: in multiprocess mode
    their metrics read this process's own files, so each worker exports what
    it measured and the collector adds the workers up.
    """
    found: list[Reading] = []
    families = itertools.chain.from_iterable(registry.collect() for registry in registries)
    for family in families:
        if family.type == "histogram":
            found += _histogram_readings(family)
        elif family.type in ("counter", "gauge"):
            suffix = "_total" if family.type == "counter" else ""
            for sample in family.samples:
                if sample.name == family.name + suffix:
                    found.append(
                        Reading(
                            family.name,
                            family.type,
                            family.documentation,
                            dict(sample.labels),
                            sample.value,
                        )
                    )
    return found


def _histogram_readings(family: Metric) -> list[Reading]:
    series: dict[tuple[tuple[str, str], ...], dict[str, t.Any]] = {}
    for sample in family.samples:
        labels_ = {k: v for k, v in sample.labels.items() if k != "le"}
        entry = series.setdefault(tuple(sorted(labels_.items())), {"buckets": []})
        if sample.name.endswith("_bucket"):
            entry["buckets"].append((float(sample.labels["le"]), sample.value))
            found_exemplar = sample.exemplar
            if found_exemplar is not None and "trace_id" in found_exemplar.labels:
                entry.setdefault("exemplars", []).append(
                    (
                        found_exemplar.labels["trace_id"],
                        found_exemplar.labels.get("span_id", ""),
                        found_exemplar.value,
                        found_exemplar.timestamp or 0.0,
                    )
                )
        elif sample.name.endswith("_sum"):
            entry["sum"] = sample.value
        elif sample.name.endswith("_count"):
            entry["count"] = int(sample.value)
    found = []
    for key, entry in series.items():
        cumulative = sorted(entry["buckets"])
        counts, previous = [], 0.0
        for _, value in cumulative:
            counts.append(int(value - previous))
            previous = value
        found.append(
            Reading(
                family.name,
                "histogram",
                family.documentation,
                dict(key),
                entry.get("sum", 0.0),
                entry.get("count", int(previous)),
                tuple(bound for bound, _ in cumulative[:-1]),
                tuple(counts),
                tuple(entry.get("exemplars", ())),
            )
        )
    return found
