"""What both request backends share: their options, families, ``le`` strings and lock."""

from __future__ import annotations

import collections.abc as cabc
import threading
import typing as t

from prometheus_client import Counter
from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.metrics_core import SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..forks import at_fork
from .names import ACTIVE
from .names import ACTIVE_LABELS
from .names import CLASSIC_COUNT
from .names import CLASSIC_COUNT_LABELS
from .names import CLASSIC_DURATION
from .names import ClassicNames
from .names import DURATION
from .names import HELP
from .names import HTTP_LABELS
from .names import REQUEST_SIZE
from .names import RESPONSE_SIZE
from .text import HistogramLines
from .text import MAX_FORMATS
from .text import RENDERING
from .text import Rows
from .text import Texts


class RequestFamilies(t.NamedTuple):
    """A collection's request families, empty: the in-flight gauge, duration, sizes."""

    active: GaugeMetricFamily
    duration: Metric
    #: The classic request count (classic naming only).
    classic_count: Metric | None
    request: Metric
    response: Metric

    def all(self) -> list[Metric]:
        return [family for family in self if family is not None]


class Active(t.NamedTuple):
    """One (method, scheme)'s requests in flight in this process, for the OTel meters."""

    method: str
    scheme: str
    requests: int
    #: What the count is read from: the apps of one worker share one in a
    #: file (multiprocess mode), each app has its own in-process.
    counter: t.Hashable


class RequestMetrics(Collector):
    """The base of both request backends (``RequestStats``, ``FileRequestStats``)."""

    def __init__(
        self,
        *,
        naming: str,
        classic: ClassicNames | None = None,
        summary: bool = False,
        buckets: cabc.Sequence[float],
        size_buckets: cabc.Sequence[float],
        static_labels: cabc.Sequence[tuple[str, str]],
        max_series: int,
        overflowed: cabc.Sequence[Counter],
    ) -> None:
        self._classic = naming == "classic"
        #: The classic names (prefix, grouping label), in classic naming.
        self.names = classic if classic is not None else ClassicNames()
        #: The duration is a summary (count and sum), not a histogram.
        self._summary = summary
        self.bounds = [*buckets, float("inf")]
        self.size_bounds = [*size_buckets, float("inf")]
        # The client's own formatting of ``le`` ("0.005", "1.0", "+Inf"), once.
        self._les = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self._size_les = [floatToGoString(b) for b in self.size_bounds]  # type: ignore[no-untyped-call]
        self._static_names = tuple(name for name, _ in static_labels)
        self._static = tuple(value for _, value in static_labels)
        self._cap = max_series
        self._overflowed = overflowed
        self._lock = threading.Lock()
        #: By format: how each family is written (None: by the client), see :meth:`_written`.
        self._formats: dict[t.Hashable, list[HistogramLines | None]] = {}
        at_fork(self._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return self._families().all()

    def in_flight(self) -> list[Active]:
        """This process's requests in flight, by (method, scheme) seen so far."""
        raise NotImplementedError

    def _written(self, families: RequestFamilies) -> RequestFamilies:
        """``families``, or in a render their histograms as rows that it writes itself.

        A format's lines are learnt at its first render; a few formats only
        (the ``Accept`` header is the client's to choose), others are written
        by prometheus_client.
        """
        form = RENDERING.get()
        if form is None or form.key is None:
            return families
        written = self._formats.get(form.key)
        listed = families.all()
        if written is None:
            if len(self._formats) >= MAX_FORMATS:
                return families
            texts: dict[tuple[str, ...], Texts] = {}  # by label names
            written = []
            for family in listed:
                labelnames, les = self._shape(family)
                shared = texts.setdefault(tuple(labelnames), {})
                written.append(HistogramLines.probe(form, family, labelnames, les, shared))
            self._formats[form.key] = written
        swapped = {
            id(family): family if lines is None else Rows(family, lines)
            for family, lines in zip(listed, written, strict=True)
        }
        return RequestFamilies(
            *(None if family is None else swapped[id(family)] for family in families)  # type: ignore[arg-type]
        )

    def _shape(self, family: Metric) -> tuple[list[str], list[str]]:
        """A request histogram's label names and ``le`` values (as :meth:`_families`)."""
        if self._classic and family.name == self.names.duration:
            return [*self.names.labels, *self._static_names], self._les
        les = self._les if family.name == DURATION else self._size_les
        return [*HTTP_LABELS, *self._static_names], les

    def _families(self) -> RequestFamilies:
        static = self._static_names
        active = GaugeMetricFamily(ACTIVE, HELP[ACTIVE], labels=[*ACTIVE_LABELS, *static])
        sizes = [
            HistogramMetricFamily(name, HELP[name], labels=[*HTTP_LABELS, *static], unit="bytes")
            for name in (REQUEST_SIZE, RESPONSE_SIZE)
        ]
        names = self.names
        duration_name = names.duration if self._classic else DURATION
        duration_labels = names.labels if self._classic else HTTP_LABELS
        kind = SummaryMetricFamily if self._summary else HistogramMetricFamily
        duration = kind(
            duration_name,
            HELP[CLASSIC_DURATION if self._classic else DURATION],
            labels=[*duration_labels, *static],
            unit="seconds",
        )
        count = None
        if self._classic:
            count = CounterMetricFamily(
                names.requests, HELP[CLASSIC_COUNT], labels=[*CLASSIC_COUNT_LABELS, *static]
            )
        return RequestFamilies(active, duration, count, *sizes)
