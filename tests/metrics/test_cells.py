from __future__ import annotations

import pytest

from flask_signal_metrics.metrics import cells
from flask_signal_metrics.metrics.cells import RequestStats
from flask_signal_metrics.metrics.names import Observation

#: (duration, request size, response size, sampled span ids) recorded in order;
#: values on bucket bounds, unknown sizes (None) and two exemplars in one bucket.
_OBSERVATIONS = [
    (0.1, 0, 10, None),
    (0.3, None, 11, (1, 2)),
    (0.05, 10, None, None),
    (5.0, 1000, 100, (3, 4)),
    (0.5, 11, 0, None),
    (0.2, 0, 10, (5, 6)),
]


@pytest.mark.parametrize("fold_at", [0, 3, 256], ids=["each", "batches", "at-scrape"])
def test_folded_buckets_are_exact(monkeypatch: pytest.MonkeyPatch, fold_at: int) -> None:
    """Observations are folded column by column; the buckets come out as one by one."""
    # Folding one observation at a time ("each") sorts lone unknown sizes too.
    monkeypatch.setattr(cells, "FOLD_LEN", fold_at * cells.WIDTH)
    stats = RequestStats(
        naming="otel",
        buckets=[0.1, 0.5, 1.0],
        size_buckets=[10, 100],
        static_labels=(),
        max_series=10,
        overflowed=(),
    )
    key = ("GET", "/item/<int:item_id>", "200", "http", "")
    for duration, request_size, response_size, exemplar in _OBSERVATIONS * 50:
        stats.record(key, None, Observation(duration, request_size, response_size, exemplar))
    families = {family.name: family for family in stats.collect()}

    def buckets(name: str) -> list[tuple[str, float]]:
        samples = families[name].samples
        return [(s.labels["le"], s.value) for s in samples if s.name.endswith("_bucket")]

    def total(name: str) -> float:
        return next(s.value for s in families[name].samples if s.name.endswith("_sum"))

    seconds = "http_server_request_duration_seconds"
    assert buckets(seconds) == [("0.1", 100), ("0.5", 250), ("1.0", 250), ("+Inf", 300)]
    assert total(seconds) == pytest.approx(50 * 6.15)
    assert buckets("http_server_request_body_size_bytes") == [
        ("10.0", 150),
        ("100.0", 200),
        ("+Inf", 250),
    ]
    assert total("http_server_request_body_size_bytes") == 50 * 1021
    assert buckets("http_server_response_body_size_bytes") == [
        ("10.0", 150),
        ("100.0", 250),
        ("+Inf", 250),
    ]
    exemplars = {
        s.labels["le"]: (s.exemplar.labels["trace_id"], s.exemplar.value)
        for s in families[seconds].samples
        if s.exemplar is not None
    }
    # The latest of each bucket: (5, 6) came after (1, 2) in (0.1, 0.5].
    assert exemplars == {"0.5": (f"{5:032x}", 0.2), "+Inf": (f"{3:032x}", 5.0)}
