from __future__ import annotations

import math
import typing as t

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.metrics.names import Observation
from flask_signal_metrics.metrics.render import render
from flask_signal_metrics.metrics.text import MAX_FORMATS

from ..conftest import make_app


@pytest.mark.parametrize("naming", ["otel", "classic"])
def test_exposition_is_consistent(registry: CollectorRegistry, naming: str) -> None:
    app = make_app()
    SignalMetrics(app, registry=registry, naming=naming)
    client = app.test_client()
    for path in ["/item/1", "/boom", "/page", "/nope", "/stream"]:
        client.get(path).close()
    body, content_type = render([registry], [])
    assert content_type.startswith("text/plain; version=0.0.4")
    for family in text_string_to_metric_families(body.decode()):
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
        for sample in family.samples:
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            if sample.name.endswith("_bucket"):
                series.setdefault(key, {})[sample.labels["le"]] = sample.value
            elif sample.name.endswith("_count"):
                series.setdefault(key, {})["count"] = sample.value
        for buckets in series.values():
            les = [float(le) for le in buckets if le != "count"]
            counts = [buckets[le] for le in buckets if le != "count"]
            assert les == sorted(les) and math.isinf(les[-1])
            assert counts == sorted(counts)  # cumulative
            assert counts[-1] == buckets["count"]


@pytest.mark.parametrize(
    ("accepted", "expected"),
    [
        ([], "text/plain; version=0.0.4"),
        (["application/openmetrics-text; version=1.0.0"], "application/openmetrics-text"),
        (["application/openmetrics-text"], "application/openmetrics-text"),
        (["application/openmetrics-text; version=0.0.1"], "text/plain; version=0.0.4"),
        (["application/openmetrics-text; version=abc"], "text/plain; version=0.0.4"),
        (
            ["text/plain; version=0.0.4", "application/openmetrics-text"],
            "text/plain; version=0.0.4",
        ),
        (["*/*", "application/openmetrics-text"], "text/plain; version=0.0.4"),
        (["image/png"], "text/plain; version=0.0.4"),
        (["\xff\xfe", ";;;"], "text/plain; version=0.0.4"),
    ],
)
def test_render_negotiation(accepted: list[str], expected: str) -> None:
    registry = CollectorRegistry()
    body, content_type = render([registry], accepted)
    assert content_type.startswith(expected)
    if expected.startswith("application/openmetrics-text"):
        assert body.endswith(b"# EOF\n")


#: Label values that need escaping, or that the render's own writing must leave to the client.
_ODD_ROUTES = ['/q"uote/<x>', "/back\\slash/<x>", "/new\nline/<x>", "/\ue000/<x>", "/ünï/<x>"]


#: What Prometheus 3 asks for (OpenMetrics with UTF-8 names), and some versions.
_FORMATS = [
    [],
    ["text/plain; version=0.0.4"],
    ["application/openmetrics-text"],
    ["application/openmetrics-text; version=1.0.0; escaping=allow-utf-8"],
    ["application/openmetrics-text; version=1.0.0; escaping=underscores"],
    ["application/openmetrics-text; version=1.1.0"],
    ["application/openmetrics-text; version=1.2.0"],
    ["application/openmetrics-text; version=1.3.0"],
]


def _odd_app(registry: CollectorRegistry, naming: str) -> Flask:
    app = make_app()
    for n, rule in enumerate(_ODD_ROUTES):
        app.add_url_rule(rule, f"odd{n}", lambda x: "ok")
    SignalMetrics(app, registry=registry, naming=naming, labels={"service": 'sh"o\\p\n'})
    return app


def _traffic(app: Flask, paths: list[str]) -> None:
    client = app.test_client()
    for path in paths:
        client.get(path).close()
    client.post("/echo", data=b"x" * 700)


@pytest.mark.parametrize("naming", ["otel", "classic"])
def test_render_writes_what_the_clients_encoder_writes(
    registry: CollectorRegistry, naming: str
) -> None:
    from prometheus_client.exposition import choose_encoder

    app = _odd_app(registry, naming)
    state = app.extensions["signal_metrics"]
    requests = state.metrics.requests
    key = ("GET", "/item/<int:item_id>", "200", "http", "")
    first = ["/item/1", "/boom", "/nope", "/stream"]
    for paths in (first, ["/page", *(rule.replace("<x>", "1") for rule in _ODD_ROUTES)]):
        _traffic(app, paths)
        # Exemplars in two buckets, one with the time of a whole second.
        requests.record(key, None, Observation(0.003, 5, 7, exemplar=(2**127 + 5, 2**63 + 9)))
        requests.record(key, None, Observation(7.0, None, None, exemplar=(1, 2)))
        pending = requests._cells[key].pending  # flat: the last observation's exemplar last
        pending[-1] = pending[-1]._replace(when=1_700_000_000.0)
        for accepted in _FORMATS:
            encoder, content_type = choose_encoder(", ".join(accepted))
            body, rendered_type = render([registry], accepted)
            assert rendered_type == content_type
            assert body == encoder(registry)
    assert len(requests._formats) <= MAX_FORMATS  # the others: the client's
    text = render([registry], ["application/openmetrics-text"])[0].decode()
    assert "trace_id=" in text
    assert 'http_route="/\ue000/<x>"' in text and 'http_route="/q\\"uote/<x>"' in text


def test_render_writes_the_request_series_itself(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not through the client's samples, which cost the most in a large exposition."""
    from prometheus_client.metrics_core import HistogramMetricFamily

    app = make_app()
    SignalMetrics(app, registry=registry)
    _traffic(app, ["/item/1", "/nope", "/boom"])
    made: list[str] = []
    add_metric = HistogramMetricFamily.add_metric

    def counted(family: HistogramMetricFamily, *args: t.Any, **kw: t.Any) -> None:
        made.append(family.name)
        add_metric(family, *args, **kw)

    formats: list[list[str]] = [[], ["application/openmetrics-text"]]
    for accepted in formats:
        render([registry], accepted)  # the first learns how the client writes the format
    monkeypatch.setattr(HistogramMetricFamily, "add_metric", counted)
    _traffic(app, ["/item/2", "/page"])
    for accepted in formats:
        body, _ = render([registry], accepted)
        assert b'http_server_request_duration_seconds_count{error_type="ValueError"' in body
        assert b'http_server_request_body_size_bytes_count{error_type=""' in body
    assert [name for name in made if name.startswith("http_server")] == []
