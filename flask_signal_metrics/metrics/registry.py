"""Registries: the extension's own, the default one, and several exposed as one."""

from __future__ import annotations

import collections.abc as cabc

from prometheus_client import CollectorRegistry
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .text import Rows


class Union(Collector):
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
        if isinstance(metric, Rows):
            return not self._names.isdisjoint(metric.sample_names())
        return any(sample.name in self._names for sample in metric.samples)


def new_registry() -> CollectorRegistry:
    """A registry of the extension's own, so apps and tests never collide."""
    return CollectorRegistry(auto_describe=True)


def default_registry() -> CollectorRegistry:
    """prometheus_client's process-wide registry (process, platform, GC, user metrics)."""
    return REGISTRY
