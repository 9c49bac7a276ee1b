"""Why the request histograms are cells of our own: one request's recording, both ways.

    python bench/bench_cells.py

"client": what a prometheus_client-only design does per request: three
``Histogram.observe`` (duration, request size, response size) on cached
children, and ``Gauge.dec`` for the in-flight count. "cells":
``RequestStats.record``, which appends the observation to its series'
pending list (folded into the same three histograms at scrape time) and
counts the request finished, without a lock, and is exposed through
prometheus_client's metric families.
"""

from __future__ import annotations

import gc
import timeit

from prometheus_client import CollectorRegistry
from prometheus_client import Gauge
from prometheus_client import Histogram

from flask_signal_metrics.config import DURATION_BUCKETS
from flask_signal_metrics.config import SIZE_BUCKETS
from flask_signal_metrics.metrics.cells import RequestStats
from flask_signal_metrics.metrics.names import Observation

KEY = ("GET", "/item/<int:item_id>", "200", "http", "")


def main() -> None:
    registry = CollectorRegistry()
    names = ("d", "q", "r")
    histograms = [
        Histogram(n, n, list(KEY), registry=registry, buckets=b).labels(*KEY)
        for n, b in zip(names, (DURATION_BUCKETS, SIZE_BUCKETS, SIZE_BUCKETS), strict=True)
    ]
    gauge = Gauge("g", "g", ["m", "s"], registry=registry).labels("GET", "http")
    duration, request_size, response_size = histograms

    def client() -> None:
        duration.observe(0.003)
        request_size.observe(0)
        response_size.observe(700)
        gauge.dec()

    stats = RequestStats(
        naming="otel",
        buckets=DURATION_BUCKETS,
        size_buckets=SIZE_BUCKETS,
        static_labels=(),
        max_series=10,
        overflowed=(),
    )
    group = stats.group("GET", "http")

    def cells() -> None:
        stats.record(KEY, group, Observation(0.003, 0, 700))

    n = 200_000
    gc.disable()
    for name, fn in (("client", client), ("cells", cells)):
        best = min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e6
        print(f"{name:7} {best:5.2f} us per request")


if __name__ == "__main__":
    main()
