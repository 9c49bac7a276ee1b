"""The request histograms' text, learnt from prometheus_client's own encoder.

prometheus_client's encoders format every sample anew: its labels sorted,
escaped and joined, on every scrape. The request histograms, the bulk of a
large exposition, are written here instead: the client's own encoder writes
each series' label part once (a series' labels never change), and a render
formats only the values. Everything else is still the client's to write.
"""

from __future__ import annotations

import collections.abc as cabc
import contextvars
import functools
import itertools
import typing as t

from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.metrics_core import SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from .names import Kept


class Collected(Collector):
    """Metric families already collected, as a collector."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


class Format(t.NamedTuple):
    """The exposition format of a render."""

    content_type: str
    #: prometheus_client's encoder for it.
    encoder: t.Callable[[Collector], bytes]
    #: What the encoder writes after the last family (OpenMetrics' ``# EOF``).
    trailer: bytes
    #: Equal for renders that write alike: the type, and the encoder and its
    #: options; None if they cannot be compared (the client writes everything).
    key: t.Hashable | None


def make_format(content_type: str, encoder: t.Callable[[Collector], bytes]) -> Format:
    """The format of ``encoder``, with the key that tells renders that write alike."""
    options: t.Hashable = encoder
    if isinstance(encoder, functools.partial):  # a new one per call, equal options
        options = (encoder.func, encoder.args, tuple(sorted(encoder.keywords.items())))
    key: t.Hashable | None = (content_type, options)
    try:
        hash(key)
    except TypeError:
        key = None
    return Format(content_type, encoder, encoder(Collected([])), key)


#: The format of the render under way in this context, if any: request
#: collectors then hand over rows for it (:class:`Rows`).
RENDERING: contextvars.ContextVar[Format | None] = contextvars.ContextVar(
    "flask_signal_metrics_rendering", default=None
)

#: Formats whose lines a request collector keeps; others are the client's to write.
MAX_FORMATS = 4

#: Series written per chunk: each chunk is one join and one encode, so a
#: render never runs one long C call that holds the GIL.
_CHUNK_SERIES = 500

#: Stands for the ``le`` value in the line the client writes once per series.
_LE = "\ue000"


class Row(t.NamedTuple):
    """One series of a histogram family, for its :class:`HistogramLines`."""

    values: tuple[str, ...]
    #: Per bucket, not cumulative.
    counts: list[int]
    total: float
    exemplars: list[Kept | None] | None


class SeriesText(t.NamedTuple):
    """One series' lines as the client writes them, less the sample's name and value.

    The same in every family of the same label names: kept once for them all.
    """

    #: A bucket line: its name + ``head`` + its ``le`` + ``tail`` + its value.
    head: str
    tail: str
    #: The ``_count`` and ``_sum`` lines: their name + ``labels`` + the value.
    labels: str


#: By label values: a series' text (None: the client writes it), see :class:`SeriesText`.
Texts = dict[tuple[str, ...], "SeriesText | None"]


class Rows(Metric):
    """A histogram family whose series a render writes through their :class:`HistogramLines`.

    Made only within a render (see :data:`RENDERING`); it has no samples.
    """

    def __init__(self, family: Metric, lines: HistogramLines) -> None:
        super().__init__(family.name, family.documentation, family.type, family.unit)
        self.lines = lines
        self.rows: list[Row] = []

    def sample_names(self) -> tuple[str, ...]:
        """The names its samples would have."""
        if not self.rows:
            return ()
        return (self.name + "_bucket", self.name + "_count", self.name + "_sum")


def add_histogram(
    family: Metric,
    values: list[str],
    les: list[str],
    counts: list[int],
    total: float,
    kept: list[Kept | None] | None = None,
) -> None:
    """Add one series (per-bucket counts) to a histogram family, or to its :class:`Rows`.

    A summary family (the classic duration as a summary) gets the count and sum.
    """
    if isinstance(family, Rows):
        family.rows.append(Row(tuple(values), counts, total, kept))
        return
    if family.type == "summary":
        t.cast(SummaryMetricFamily, family).add_metric(values, sum(counts), total)
        return
    cumulative = 0
    buckets: list[t.Any] = []
    for i, (le, count) in enumerate(zip(les, counts, strict=True)):
        cumulative += count
        exemplar = None if kept is None else kept[i]
        if exemplar is None:
            buckets.append((le, cumulative))
        else:
            buckets.append((le, cumulative, Exemplar(*exemplar_parts(exemplar))))
    t.cast(HistogramMetricFamily, family).add_metric(values, buckets, total)


class HistogramLines:
    """How one histogram family is written in one format, learnt from the client's encoder.

    Its header, and for each series the text around its values, are what
    prometheus_client writes for them; :meth:`write` adds the values,
    formatted with the client's own ``floatToGoString``. A series whose text
    cannot be split so (a label value holding :data:`_LE`) is written by the
    client.
    """

    def __init__(
        self,
        form: Format,
        family: Metric,
        labelnames: list[str],
        les: list[str],
        exemplars: bool,
        texts: Texts,
    ) -> None:
        self._form = form
        self._name = family.name
        self._documentation = family.documentation
        self._unit = family.unit
        self._labelnames = labelnames
        self._les = les
        self._exemplars = exemplars
        self.header = client_text(form, [self._empty()])
        self._series = texts

    @classmethod
    def probe(
        cls, form: Format, family: Metric, labelnames: list[str], les: list[str], texts: Texts
    ) -> HistogramLines | None:
        """The family's lines in ``form``, or None if the client's output is not as expected.

        Expected: a histogram series is its buckets, then ``_count`` and
        ``_sum``, one line each; the encoder's output for several families is
        that of each, then its trailer; and OpenMetrics writes a bucket's
        exemplar as :func:`exemplar_text` does.
        """
        if family.type != "histogram":
            return None
        shape = HistogramMetricFamily(family.name, "", labels=labelnames)
        shape.add_metric(["x"] * len(labelnames), [(le, 0) for le in les], 0.0)
        name = family.name
        expected = [name + "_bucket"] * len(les) + [name + "_count", name + "_sum"]
        if [sample.name for sample in shape.samples] != expected:
            return None
        empty = form.encoder(Collected([family]))
        if not empty.endswith(form.trailer) or len(empty) == len(form.trailer):
            return None
        kept = Kept(0xABC, 0xDEF, 0.25, 1_700_000_000.125)
        bucket = Exemplar(*exemplar_parts(kept))
        line = HistogramMetricFamily(name, "", labels=())
        line.samples.append(Sample(name + "_bucket", {"le": "1.0"}, 0.0, None, bucket))
        text = client_text(form, [line]).rstrip("\n").rsplit("\n", 1)[-1]
        if text == f'{name}_bucket{{le="1.0"}} 0.0{exemplar_text(kept)}':
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

    def _learn(self, rows: list[Row]) -> None:
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
        text = client_text(self._form, [family])
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
                known = SeriesText(parts[0][len(bucket_name) :], parts[1][:-3], text_labels)
            self._series[label_values] = known

    def write(self, rows: list[Row], numbers: dict[int, str]) -> cabc.Iterator[bytes]:
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
                    value if exemplar is None else value[:-1] + exemplar_text(exemplar) + "\n"
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

    def _by_client(self, row: Row) -> str:
        family = self._empty()
        add_histogram(family, list(row.values), self._les, row.counts, row.total, row.exemplars)
        return client_text(self._form, [family])[len(self.header) :]


def exemplar_parts(kept: Kept) -> tuple[dict[str, str], float, float]:
    """A kept exemplar's labels, value and time, as the client's ``Exemplar`` takes them."""
    # 32 + 16 hex digits and two short names: 62 runes, always within
    # OpenMetrics' 128, so the encoder can never reject it.
    ids = {"trace_id": f"{kept.trace_id:032x}", "span_id": f"{kept.span_id:016x}"}
    return ids, kept.value, kept.when


def exemplar_text(kept: Kept) -> str:
    """A bucket's exemplar as OpenMetrics writes it after the value.

    :meth:`HistogramLines.probe` checks that the client writes it so.
    """
    return (
        f' # {{span_id="{kept.span_id:016x}",trace_id="{kept.trace_id:032x}"}}'
        f" {floatToGoString(kept.value)} {kept.when}"  # type: ignore[no-untyped-call]
    )


def client_text(form: Format, metrics: list[Metric]) -> str:
    """What the client's encoder writes for ``metrics``, less its trailer."""
    body = form.encoder(Collected(metrics))
    return body[: len(body) - len(form.trailer)].decode()
