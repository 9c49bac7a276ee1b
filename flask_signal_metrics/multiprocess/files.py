"""The request metrics and histograms of multiprocess mode, written to this process's files."""

from __future__ import annotations

import collections.abc as cabc
import copy
import threading
import typing as t
from bisect import bisect_left

from prometheus_client import CollectorRegistry
from prometheus_client import Histogram
from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..forks import at_fork
from ..metrics.family import capped
from ..metrics.names import ACTIVE
from ..metrics.names import ACTIVE_LABELS
from ..metrics.names import CLASSIC_COUNT
from ..metrics.names import CLASSIC_COUNT_LABELS
from ..metrics.names import CLASSIC_DURATION
from ..metrics.names import DURATION
from ..metrics.names import HELP
from ..metrics.names import HistogramSpec
from ..metrics.names import HTTP_LABELS
from ..metrics.names import Observation
from ..metrics.names import REQUEST_SIZE
from ..metrics.names import RequestKey
from ..metrics.names import RESPONSE_SIZE
from ..metrics.requests import Active
from ..metrics.requests import RequestMetrics
from ..metrics.text import add_histogram
from ._compat import client_writes_files
from .writer import FileGroup
from .writer import FileKeys
from .writer import FILES
from .writer import HistogramValues
from .writer import Value


def histogram_keys(
    name: str, labels: cabc.Sequence[str], values: cabc.Sequence[str], les: list[str], doc: str
) -> FileKeys:
    """The keys prometheus_client's own Histogram writes for one series."""
    buckets = [mmap_key(name, name + "_bucket", [*labels, "le"], [*values, le], doc) for le in les]
    return FileKeys(buckets, mmap_key(name, name + "_sum", list(labels), list(values), doc))


def read(values: dict[str, float], keys: FileKeys) -> tuple[list[int], float]:
    """A file histogram's per-bucket counts and sum, from this process's values."""
    return [int(values.get(key, 0.0)) for key in keys.buckets], values.get(keys.total, 0.0)


class SeriesValues:
    """One request series' values in this process; a size histogram is made at its first size."""

    __slots__ = ("counter", "duration", "request", "response")

    def __init__(self, duration: HistogramValues, counter: Value | None) -> None:
        self.duration = duration
        #: None until a size was known (a stream's response has none).
        self.request: HistogramValues | None = None
        self.response: HistogramValues | None = None
        #: The classic request counter (classic naming only).
        self.counter = counter


class FileSeries:
    """One request series: its values' file keys, made once, and this process's values.

    The values are made in the process that records (``seen`` is the table
    they were made in): a forked worker makes its own, in its own files.
    """

    __slots__ = ("counter", "duration", "request", "response", "seen", "values")

    def __init__(
        self, duration: FileKeys, request: FileKeys, response: FileKeys, counter: str | None
    ) -> None:
        self.duration = duration
        self.request = request
        self.response = response
        #: The classic request counter's key (classic naming only).
        self.counter = counter
        self.seen: dict[str, Value] | None = None
        self.values: SeriesValues

    def resolve(self) -> SeriesValues:
        """This process's values (hold the files' lock)."""
        counter = None if self.counter is None else FILES.value("counter", self.counter)
        self.values = SeriesValues(FILES.histogram(self.duration), counter)
        self.seen = FILES.values
        return self.values

    def request_values(self) -> HistogramValues:
        """The request size histogram's values (hold the files' lock)."""
        found = self.values.request = FILES.histogram(self.request)
        return found

    def response_values(self) -> HistogramValues:
        """The response size histogram's values (hold the files' lock)."""
        found = self.values.response = FILES.histogram(self.response)
        return found


class FileRequestStats(RequestMetrics):
    """The request metrics in multiprocess mode, written to this process's files.

    ``MultiProcessCollector`` sums every process's files at scrape time. Same
    names, labels, help and cap as ``RequestStats`` (no exemplars:
    prometheus_client keeps none in files); the in-flight gauge is a
    ``livesum`` gauge in a file of its own, which ``process_died`` removes
    with a dead worker's. As a collector it reads this process's own values,
    which the OTLP bridge exports (``/metrics`` reads every file).
    """

    def __init__(self, **options: t.Any) -> None:
        super().__init__(**options)
        self._series: dict[RequestKey, FileSeries] = {}
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
        self, key: tuple[str, str, str, str, str], group: FileGroup | None, observed: Observation
    ) -> None:
        """Record one finished request (the files keep no exemplars)."""
        series = self._series.get(key) or capped(  # type: ignore[call-overload]
            self._series, key, self._lock, self._cap, self._overflowed, self._keys
        )
        recorder = FileRecorder(self, series, group)
        recorder.add(observed.duration, observed.request_size, observed.response_size)

    def recorder(
        self, key: tuple[str, str, str, str, str], group: FileGroup
    ) -> FileRecorder | None:
        """What :meth:`record` does for ``key`` and ``group``, bound: None if ``key`` overflowed."""
        series = self._series.get(key)  # type: ignore[call-overload]
        return None if series is None else FileRecorder(self, series, group)

    def in_flight(self) -> list[Active]:
        with self._lock:
            groups = list(self.groups.items())
        found = []
        # Read, never made: making one opens this process's files (and starts
        # its workers' thread), which a forked child that records nothing must not.
        with FILES.lock:
            for (method, scheme), group in groups:
                value = FILES.values.get(group.key)
                requests = 0 if value is None else round(value.number)
                found.append(Active(method, scheme, requests, group.key))
        return found

    def collect(self) -> list[Metric]:
        families = self._families()
        with self._lock:
            groups = list(self.groups.items())
            series = list(self._series.items())
        values = FILES.numbers()
        static = self._static
        for (method, scheme), group in groups:
            families.active.add_metric([method, scheme, *static], values.get(group.key, 0.0))
        done: set[str] = set()  # classic: several series share a duration and a count
        for key, keys in series:
            if keys.duration.total in values and keys.duration.total not in done:
                done.add(keys.duration.total)
                labels = (
                    [key.method, key.route, key.status, *static]
                    if self._classic
                    else [*key, *static]
                )
                add_histogram(families.duration, labels, self._les, *read(values, keys.duration))
            if keys.counter is not None and keys.counter in values and keys.counter not in done:
                done.add(keys.counter)
                count = t.cast(CounterMetricFamily, families.classic_count)
                count.add_metric([key.method, key.status, *static], values.get(keys.counter, 0.0))
            for sizes, file_keys in (
                (families.request, keys.request),
                (families.response, keys.response),
            ):
                if file_keys.total in values:  # a size was known
                    add_histogram(sizes, [*key, *static], self._size_les, *read(values, file_keys))
        return families.all()

    def _keys(self, key: RequestKey) -> FileSeries:
        """The keys prometheus_client's own Histogram and Counter would write."""
        values = (*key, *self._static)
        labels = (*HTTP_LABELS, *self._static_names)
        count = None
        if self._classic:
            duration = histogram_keys(
                self.names.duration, (*self.names.labels, *self._static_names),
                (key.method, key.route, key.status, *self._static), self._les,
                HELP[CLASSIC_DURATION],
            )  # fmt: skip
            count = mmap_key(
                self.names.requests, self.names.requests + "_total",
                [*CLASSIC_COUNT_LABELS, *self._static_names],
                [key.method, key.status, *self._static], HELP[CLASSIC_COUNT],
            )  # fmt: skip
        else:
            duration = histogram_keys(DURATION, labels, values, self._les, HELP[DURATION])
        request = histogram_keys(REQUEST_SIZE, labels, values, self._size_les, HELP[REQUEST_SIZE])
        response = histogram_keys(
            RESPONSE_SIZE, labels, values, self._size_les, HELP[RESPONSE_SIZE]
        )
        return FileSeries(duration, request, response, count)


class FileRecorder:
    """One request series and in-flight group, bound: :meth:`FileRequestStats.record`.

    Made once per series and status for the receivers' one-step path, and
    for each request recorded the whole way.
    """

    __slots__ = ("_bounds", "_group", "_series", "_size_bounds")

    def __init__(
        self, stats: FileRequestStats, series: FileSeries, group: FileGroup | None
    ) -> None:
        self._bounds = stats.bounds
        self._size_bounds = stats.size_bounds
        self._series = series
        self._group = group

    def add(self, duration: float, request_size: int | None, response_size: int | None) -> None:
        """Write one request's values to this process's files."""
        files = FILES
        lock = files.lock
        lock.acquire()  # not ``with``: cheaper, on every request
        try:
            series = self._series
            values = series.values if series.seen is files.values else series.resolve()
            buckets, total = values.duration
            buckets[bisect_left(self._bounds, duration)].add(1.0)
            total.add(duration)
            if request_size is not None:
                buckets, total = values.request or series.request_values()
                buckets[bisect_left(self._size_bounds, request_size)].add(1.0)
                if request_size:  # an empty body adds nothing to the sum: no write
                    total.add(request_size)
            if response_size is not None:
                buckets, total = values.response or series.response_values()
                buckets[bisect_left(self._size_bounds, response_size)].add(1.0)
                if response_size:
                    total.add(response_size)
            if values.counter is not None:
                values.counter.add(1.0)
            if self._group is not None:
                self._group.started.live().add(-1.0)
        finally:
            lock.release()


_H = t.TypeVar("_H", bound="FileHistogram")


def histogram(spec: HistogramSpec, registry: CollectorRegistry) -> Histogram | FileHistogram:
    """A histogram of the extension's (templates, streams, declared signals).

    prometheus_client's own in one process; in multiprocess mode a
    :class:`FileHistogram`, written as the request metrics are.
    """
    if client_writes_files():
        return FileHistogram(spec, registry)
    name, documentation, labelnames, buckets, unit = spec
    return Histogram(name, documentation, labelnames, registry=registry, buckets=buckets, unit=unit)


class FileHistogram(Collector):
    """A histogram in this process's files, for ``Family`` in multiprocess mode.

    Made by :func:`histogram`. The client's Histogram in multiprocess mode
    takes its values' lock, checks the pid and calls ``write_value`` for the
    bucket and for the sum; this writes both as the request metrics do
    (:class:`~.writer.Value`), in the same files and format. Like the
    client's, a labelled one makes its series with ``labels()``, an
    unlabelled one is its own; as a collector it reads this process's
    values, for the OTLP bridge (``/metrics`` reads every process's files).
    """

    def __init__(self, spec: HistogramSpec, registry: CollectorRegistry) -> None:
        name, documentation = spec.name, spec.documentation
        self._name = name
        self._documentation = documentation
        self.labelnames = spec.labelnames
        self._unit = spec.unit
        self._bounds = [*spec.buckets, float("inf")]
        self._les = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()
        at_fork(self._forked)
        #: The series made by ``labels()``, by label values.
        self._series: dict[tuple[str, ...], FileHistogram] = {}
        #: This series' file keys (none for the labelled parent).
        self._keys = FileKeys([], "")
        if not self.labelnames:  # its own one series
            self._keys = histogram_keys(name, (), (), self._les, documentation)
            self._series[()] = self
        #: This process's values, and the table they were made in (see FileSeries).
        self._seen: dict[str, Value] | None = None
        self._values: HistogramValues | None = None
        registry.register(self)

    def _forked(self) -> None:
        self._lock = threading.Lock()  # the series made by labels() use only their parent's

    def labels(self: _H, *values: str) -> _H:
        """The series of these label values (made once; ``Family`` caches it)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self._name}: {len(self.labelnames)} label values expected")
        values = tuple(map(str, values))  # as the client's labels() makes them
        with self._lock:
            found = self._series.get(values)
            if found is None:
                # Shares the parent's options, lock and series table.
                found = self._series[values] = copy.copy(self)
                found._keys = histogram_keys(
                    self._name, self.labelnames, values, self._les, self._documentation
                )
        return t.cast(_H, found)

    def observe(self, amount: float) -> None:
        files = FILES
        lock = files.lock
        lock.acquire()  # not ``with``: cheaper
        try:
            if self._seen is files.values and self._values is not None:
                buckets, total = self._values
            else:
                if not self._keys.total:  # before anything is written
                    raise ValueError(f"{self._name} has labels: observe a series of labels()")
                buckets, total = self._values = files.histogram(self._keys)
                self._seen = files.values
            buckets[bisect_left(self._bounds, amount)].add(1.0)
            total.add(amount)
        finally:
            lock.release()

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        with self._lock:
            series = list(self._series.items())
        values = FILES.numbers()
        for label_values, made in series:
            if made._keys.total in values:  # observed in this process
                add_histogram(family, list(label_values), self._les, *read(values, made._keys))
        return [family]

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            self._name, self._documentation, labels=list(self.labelnames), unit=self._unit
        )
