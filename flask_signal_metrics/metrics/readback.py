"""Reading metrics back: the report command's summaries, and readings for the OTLP bridge."""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import itertools
import typing as t

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ..config import LOCK_TIMEOUT
from ..multiprocess.directory import exposed
from ..multiprocess.directory import read_directory
from .registry import Union


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
    return list(Union(exposed(collectors, lock_timeout), frozenset()).collect())


def parse_text(text: str) -> list[Metric]:
    """Metric families from a Prometheus text exposition (a scraped ``/metrics``)."""
    return list(text_string_to_metric_families(text))


def read_multiprocess(path: str) -> list[Metric]:
    """Metric families aggregated from a prometheus_client multiprocess directory."""
    return read_directory(path)


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
