"""The declared metrics of the app's own signals."""

from __future__ import annotations

import collections.abc as cabc
import typing as t

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Summary

from ..multiprocess.files import histogram
from .family import Family
from .family import M
from .names import HistogramSpec
from .names import SIGNAL_ERRORS
from .names import SIGNAL_OVERFLOW


def info_series(
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labels: cabc.Sequence[tuple[str, str]],
) -> t.Any:
    """A gauge set to 1, labelled with ``labels`` (a process's constant facts); its series.

    The highest value of any worker in multiprocess mode: each process sets the same.
    """
    gauge = Gauge(
        name,
        documentation,
        tuple(n for n, _ in labels),
        registry=registry,
        multiprocess_mode="max",
    )
    series = gauge.labels(*(v for _, v in labels)) if labels else gauge
    series.set(1)
    return series


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

    def summary(
        self, name: str, documentation: str, labelnames: cabc.Sequence[str]
    ) -> Family[t.Any]:
        metric = Summary(name, documentation, tuple(labelnames), registry=self.registry)
        return self._family(metric, name)

    def gauge(
        self,
        name: str,
        documentation: str,
        labelnames: cabc.Sequence[str],
        multiprocess_mode: str | None = None,
    ) -> Family[t.Any]:
        """A gauge; in multiprocess mode the live workers' values are summed by default."""
        metric = Gauge(
            name,
            documentation,
            tuple(labelnames),
            registry=self.registry,
            multiprocess_mode=multiprocess_mode or "livesum",  # type: ignore[arg-type]
        )
        return self._family(metric, name)

    def info(self, name: str, documentation: str, labels: cabc.Sequence[tuple[str, str]]) -> t.Any:
        return info_series(self.registry, name, documentation, labels)

    def histogram(self, spec: HistogramSpec) -> Family[t.Any]:
        return self._family(histogram(spec, self.registry), spec.name)

    def cap(self, max_series: int) -> None:
        """Cap the declared metrics, those made and to come, at ``max_series`` label sets."""
        self._cap = max_series
        for family in self._families:
            family.cap = max_series

    def _family(self, metric: M, name: str) -> Family[M]:
        family = Family(metric, (), self._cap, self._overflow.labels(name))
        self._families.append(family)
        return family
