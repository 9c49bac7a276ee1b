"""The request metrics of one process: lock-free cells, folded at scrape time."""

from __future__ import annotations

import collections.abc as cabc
import itertools
import threading
import time
import typing as t
from bisect import bisect_left
from bisect import bisect_right

from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from .family import capped
from .family import Group
from .names import Kept
from .names import Observation
from .names import RequestKey
from .requests import Active
from .requests import RequestMetrics
from .text import add_histogram

_time = time.time

#: The pending observations, flat: four values each (duration, request size,
#: response size, exemplar), added by one ``list.extend`` (atomic under the
#: GIL) and read by column with slices (``pending[0::4]``), which cost a
#: fraction of transposing tuples with ``zip(*rows)``.
_Pending: t.TypeAlias = "float | int | Kept | None"

#: The values of one pending observation.
WIDTH = 4

#: Past this many pending observations the recording thread folds them.
FOLD_AT = 256

#: ``FOLD_AT`` observations, in values of the flat list.
FOLD_LEN = FOLD_AT * WIDTH


class Snapshot(t.NamedTuple):
    """One series' histograms at a scrape: per-bucket counts and sums."""

    durations: list[int]
    duration_sum: float
    requests: list[int]
    request_sum: float
    responses: list[int]
    response_sum: float
    exemplars: list[Kept | None]


class Cells:
    """One request series' histograms: duration, request and response size.

    The request path only appends its observation to ``pending`` (one
    ``list.append``, atomic under the GIL): no lock, as a lock taken on every
    request formed a convoy under threaded workers. Observations are folded
    into the buckets under ``fold_lock`` at scrape time, or by the recording
    thread once :data:`FOLD_AT` are pending (skipped if another thread is
    folding); the fold takes the first ``n`` and deletes exactly those
    (``del pending[:n]``, atomic), so nothing appended meanwhile is lost.
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
        self.exemplars: list[Kept | None] = [None] * duration_buckets
        self.request = [0] * size_buckets
        self.request_sum = 0.0
        self.response = [0] * size_buckets
        self.response_sum = 0.0

    def fold(self, bounds: list[float], size_bounds: list[float]) -> None:
        """Add the pending observations to the buckets (hold ``fold_lock``).

        Column by column with C-level builtins (``zip``, ``sorted``, ``sum``,
        one ``bisect`` per bucket bound), not one bisect per observation.
        """
        pending = self.pending
        n = len(pending)
        if not n:
            return
        flat = pending[:n]
        del pending[:n]
        durations = t.cast("list[float]", flat[0::WIDTH])
        exemplars = t.cast("list[Kept | None]", flat[3::WIDTH])
        count_into(self.duration, bounds, durations)
        self.duration_sum += sum(durations)
        self.request_sum += sizes_into(self.request, size_bounds, flat[1::WIDTH])
        self.response_sum += sizes_into(self.response, size_bounds, flat[2::WIDTH])
        if exemplars.count(None) != len(exemplars):
            kept = self.exemplars
            for duration, exemplar in itertools.compress(
                zip(durations, exemplars, strict=True), exemplars
            ):
                kept[bisect_left(bounds, duration)] = exemplar  # the latest wins

    def snapshot(self, bounds: list[float], size_bounds: list[float]) -> Snapshot:
        with self.fold_lock:
            self.fold(bounds, size_bounds)
            return Snapshot(
                list(self.duration),
                self.duration_sum,
                list(self.request),
                self.request_sum,
                list(self.response),
                self.response_sum,
                list(self.exemplars),
            )


def count_into(counts: list[int], bounds: list[float], values: cabc.Sequence[float]) -> None:
    """Add each value to its bucket's count: the first bound >= the value."""
    count_sorted_into(counts, bounds, sorted(values))


def count_sorted_into(counts: list[int], bounds: list[float], ordered: list[float]) -> None:
    """:func:`count_into` for values in order."""
    total = len(ordered)
    below = 0
    for index, bound in enumerate(bounds):
        upto = bisect_right(ordered, bound)  # the values <= bound
        counts[index] += upto - below
        below = upto
        if below == total:
            return


def sizes_into(counts: list[int], bounds: list[float], sizes: cabc.Sequence[t.Any]) -> int:
    """Count the known sizes (None: unknown, not recorded); their sum."""
    try:
        # Sorting fails on a None among them: cheaper than looking for one,
        # which compares every size with None.
        ordered = sorted(sizes)
    except TypeError:
        ordered = sorted(size for size in sizes if size is not None)
    if ordered and ordered[0] is None:  # a lone None sorts without a comparison
        ordered = []
    count_sorted_into(counts, bounds, ordered)
    return sum(ordered)


def latest(a: Kept | None, b: Kept | None) -> Kept | None:
    """The later of two exemplars."""
    if a is None or (b is not None and b.when > a.when):
        return b
    return a


class _Classic(t.NamedTuple):
    """A classic duration series, summed from the cells of its statuses' error types."""

    counts: list[int]
    total: float
    exemplars: list[Kept | None]


class RequestStats(RequestMetrics):
    """The request metrics of one app, as a prometheus_client collector.

    Naming ``otel``: ``http_server_request_duration_seconds`` and the two body
    size histograms, labelled by :data:`~.names.HTTP_LABELS`. Naming
    ``classic``: the duration becomes prometheus-flask-exporter's
    ``flask_http_request_duration_seconds{method,path,status}`` plus
    ``flask_http_request_total{method,status}``, summed from the same cells
    at scrape time. Both: ``http_server_active_requests{http_request_method,
    url_scheme}``.
    """

    def __init__(self, **options: t.Any) -> None:
        super().__init__(**options)
        #: (method, scheme) -> Group; read directly on the request path.
        self.groups: dict[tuple[str, str], Group] = {}
        self._cells: dict[RequestKey, Cells] = {}

    def group(self, method: str, scheme: str) -> Group:
        """The group of (method, scheme); both come from small fixed sets."""
        found = self.groups.get((method, scheme))
        if found is None:
            with self._lock:
                found = self.groups.setdefault((method, scheme), Group())
        return found

    def record(
        self, key: tuple[str, str, str, str, str], group: Group | None, observed: Observation
    ) -> None:
        """Record one finished request.

        :param group: the group whose ``started`` counted this request in
            flight, or ``None`` if it was not counted.
        """
        cells = self._cells.get(key) or capped(  # type: ignore[call-overload]
            self._cells, key, self._lock, self._cap, self._overflowed, self._new_cells
        )
        duration, request_size, response_size, exemplar = observed
        kept = None
        if exemplar is not None:
            trace_id, span_id = exemplar
            kept = Kept(trace_id, span_id, duration, _time())
        cells.pending.extend((duration, request_size, response_size, kept))
        if group is not None:
            next(group.finished)
        if len(cells.pending) > FOLD_LEN:
            self.fold_some(cells)

    def recorder(self, key: tuple[str, str, str, str, str], group: Group) -> Recorder | None:
        """What :meth:`record` does for ``key`` and ``group``, bound: None if ``key`` overflowed."""
        cells = self._cells.get(key)  # type: ignore[call-overload]
        return None if cells is None else Recorder(self, cells, group)

    def fold_some(self, cells: Cells) -> None:
        """Fold a series' pending observations, unless another thread is folding them."""
        if cells.fold_lock.acquire(blocking=False):
            try:
                cells.fold(self.bounds, self.size_bounds)
            finally:
                cells.fold_lock.release()

    def _new_cells(self, key: RequestKey) -> Cells:
        return Cells(len(self.bounds), len(self.size_bounds))

    def _forked(self) -> None:
        super()._forked()
        for cells in self._cells.values():
            cells.fold_lock = threading.Lock()

    def in_flight(self) -> list[Active]:
        with self._lock:
            return [Active(*labels, group.active(), group) for labels, group in self.groups.items()]

    def collect(self) -> list[Metric]:
        families = self._written(self._families())
        with self._lock:
            active = [(labels, group.active()) for labels, group in self.groups.items()]
            series = list(self._cells.items())
        for (method, scheme), number in active:
            families.active.add_metric([method, scheme, *self._static], number)
        classic: dict[tuple[str, str, str], _Classic] = {}
        for key, cells in series:
            snapshot = cells.snapshot(self.bounds, self.size_bounds)
            values = [*key, *self._static]
            if not self._classic:
                add_histogram(
                    families.duration,
                    values,
                    self._les,
                    snapshot.durations,
                    snapshot.duration_sum,
                    snapshot.exemplars,
                )
            else:
                classic_key = (key.method, key.route, key.status)
                merged = classic.get(classic_key)
                classic[classic_key] = (
                    _Classic(snapshot.durations, snapshot.duration_sum, snapshot.exemplars)
                    if merged is None
                    else _Classic(
                        [a + b for a, b in zip(merged.counts, snapshot.durations, strict=True)],
                        merged.total + snapshot.duration_sum,
                        [
                            latest(a, b)
                            for a, b in zip(merged.exemplars, snapshot.exemplars, strict=True)
                        ],
                    )
                )
            if sum(snapshot.requests):
                add_histogram(
                    families.request,
                    values,
                    self._size_les,
                    snapshot.requests,
                    snapshot.request_sum,
                )
            if sum(snapshot.responses):
                add_histogram(
                    families.response,
                    values,
                    self._size_les,
                    snapshot.responses,
                    snapshot.response_sum,
                )
        totals: dict[tuple[str, str], int] = {}
        for (method, path, status), merged in classic.items():
            values = [method, path, status, *self._static]
            add_histogram(
                families.duration, values, self._les, merged.counts, merged.total, merged.exemplars
            )
            totals[(method, status)] = totals.get((method, status), 0) + sum(merged.counts)
        count = t.cast(CounterMetricFamily, families.classic_count)
        for (method, status), n in totals.items():
            count.add_metric([method, status, *self._static], n)
        return families.all()


class Recorder:
    """One request series and in-flight group, bound: :meth:`RequestStats.record` in one call.

    For the receivers' common case (a request without a span, recorded in
    full): the series is not looked up by its five labels.
    """

    __slots__ = ("_cells", "_finished", "_pending", "_stats")

    def __init__(self, stats: RequestStats, cells: Cells, group: Group) -> None:
        self._stats = stats
        self._cells = cells
        self._pending = cells.pending  # folded in place, never replaced
        self._finished = group.finished

    def add(self, duration: float, request_size: int | None, response_size: int | None) -> None:
        pending = self._pending
        pending.extend((duration, request_size, response_size, None))
        next(self._finished)
        if len(pending) > FOLD_LEN:
            self._stats.fold_some(self._cells)
