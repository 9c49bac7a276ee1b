"""The metrics bridge, driven directly: :mod:`flask_signal_metrics.otlp.bridge`."""

from __future__ import annotations

import bisect
import typing as t

import pytest
from blinker import Namespace
from flask import Flask
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram

from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.config import DURATION_BUCKETS

from ..conftest import http_labels
from ..conftest import make_app
from ..conftest import memory_provider

if t.TYPE_CHECKING:
    pass

from .conftest import attributes
from .conftest import bridge
from .conftest import collect_failed
from .conftest import exported
from .conftest import Failing
from .conftest import PARENT_ID
from .conftest import scraped
from .conftest import Sink
from .conftest import TRACE_ID
from .conftest import wait_for

pytestmark = pytest.mark.real


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [("req-42", ""), ("ab" * 32, PARENT_ID), (TRACE_ID, "span-7")],
    ids=["not-hex", "too-long", "bad-span"],
)
def test_exemplars_without_w3c_ids_are_left_out(
    app: Flask, registry: CollectorRegistry, trace_id: str, span_id: str
) -> None:
    """A user's histogram may label exemplars ``trace_id`` as it likes; its points still go."""
    jobs = Histogram("job_seconds", "A job.", registry=registry, buckets=(1, 10))
    jobs.observe(0.3, exemplar={"trace_id": trace_id, "span_id": span_id})
    jobs.observe(5, exemplar={"trace_id": TRACE_ID, "span_id": PARENT_ID})
    sink = Sink()
    assert bridge(sink).export() is True
    (request,) = sink.sent
    (point,) = [
        point
        for metric in request.resource_metrics[0].scope_metrics[0].metrics
        if metric.name == "job_seconds"
        for point in metric.histogram.data_points
    ]
    assert point.count == 2
    assert [(e.trace_id.hex(), e.span_id.hex()) for e in point.exemplars] == [(TRACE_ID, PARENT_ID)]


def test_a_failing_reading_is_counted_logged_once_and_the_bridge_goes_on(
    app: Flask, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    failing = Failing()
    registry.register(failing)
    sink = Sink()
    running = bridge(sink, interval=0.02)
    running.start()
    try:
        assert wait_for(lambda: collect_failed(registry) >= 3), "failed readings not counted"
        assert running._thread is not None and running._thread.is_alive()
        failing.on = False  # the next reading succeeds: the same thread sends it
        assert wait_for(lambda: len(sink.sent) >= 1), "the bridge stopped after a failure"
    finally:
        running.shutdown()
        registry.unregister(failing)
    logged = [r for r in caplog.records if "reading the registries raised" in r.getMessage()]
    assert len(logged) == 1


@pytest.mark.parametrize(
    ("route", "buckets"),
    [("/twin", None), ("/twin-buckets", [0.001, 0.5, 1.0, 5.0, 60.0])],
    ids=["same-buckets", "other-buckets"],  # the route per case: apps of the other may linger
)
def test_the_same_route_in_two_apps_is_one_point_their_sum(
    route: str, buckets: list[float] | None
) -> None:
    """Two points of one attribute set in a resource are an invalid OTLP stream."""
    requests = {"one": 3, "two": 4}
    apps, scrapes, spans, providers = [], [], [], []  # the apps kept: the bridge holds none
    try:
        for name, n in requests.items():
            app = make_app(name)
            apps.append(app)
            app.add_url_rule(route, "twin", lambda: "twin")
            if buckets is not None and name == "two":
                app.config["SIGNAL_METRICS_BUCKETS"] = buckets
            provider, exporter = memory_provider()
            providers.append(provider)
            SignalMetrics(app, serve_default_registry=False, tracer_provider=provider)
            client = app.test_client()
            for _ in range(n):
                assert client.get(route).status_code == 200
            scrapes.append(scraped(client.get("/metrics").get_data(as_text=True)))
            spans += [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
        sink = Sink()
        assert bridge(sink).export() is True
    finally:
        for provider in providers:
            provider.shutdown()
    (point,) = [
        p
        for p in exported(sink, "http.server.request.duration")
        if attributes(p).get("http.route") == route
    ]
    key = tuple(sorted(http_labels(route, 200).items()))
    count, total = (
        sum(s[(f"http_server_request_duration_seconds_{suffix}", key)] for s in scrapes)
        for suffix in ("count", "sum")
    )
    assert point.count == count == sum(requests.values())  # the apps' /metrics, added
    assert point.sum == pytest.approx(total)
    # Other bounds: both apps' buckets add up on the bounds they share.
    assert list(point.explicit_bounds) == ([0.5, 1.0, 5.0] if buckets else list(DURATION_BUCKETS))
    assert sum(point.bucket_counts) == point.count
    # One exemplar per bucket, the latest: the last request's among them.
    kept = [bisect.bisect_left(point.explicit_bounds, e.as_double) for e in point.exemplars]
    assert len(kept) == len(set(kept)) >= 1
    assert spans[-1].context.span_id in {int.from_bytes(e.span_id, "big") for e in point.exemplars}


def test_a_declared_signal_of_an_extension_on_two_apps_is_sent_once() -> None:
    """Its registry is shared by both apps, and read once per export, not once per app."""
    saved = Namespace().signal("otlp-shared-saved")
    ext = SignalMetrics(serve_default_registry=False)
    ext.count(saved)
    apps = [make_app("one"), make_app("two")]
    for app in apps:
        ext.init_app(app)
    sends = 5
    for _ in range(sends):
        saved.send(None)
    sink = Sink()
    assert bridge(sink).export() is True
    (point,) = exported(sink, "flask_signal_otlp_shared_saved")
    for app in apps:
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert scraped(text)[("flask_signal_otlp_shared_saved_total", ())] == sends
    assert point.as_double == sends


def test_values_of_the_process_each_app_repeats_are_sent_once() -> None:
    """Each app counts every loss of the process's export, and has the info gauge: not added."""
    from flask_signal_metrics.otlp.exporters import count_dropped as _dropped

    # A label of this test's own: apps other tests left behind have series of their own.
    ours = {"case": "per-process"}
    apps = []  # kept: the bridge holds no app
    for name in ("one", "two"):
        app = make_app(name)
        app.config["SIGNAL_METRICS_LABELS"] = ours
        SignalMetrics(app, serve_default_registry=False)
        apps.append(app)
    _dropped("traces", "export_failed", 1)
    sink = Sink()
    assert bridge(sink).export() is True
    lost = {**ours, "reason": "export_failed", "signal": "traces"}
    for app in apps:  # each app's /metrics shows the one loss
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert scraped(text)[("flask_signal_metrics_otlp_dropped_total", tuple(lost.items()))] == 1

    def sent(metric: str, wanted: dict[str, str]) -> list[float]:
        points = exported(sink, metric)
        return [p.as_double for p in points if wanted.items() <= attributes(p).items()]

    assert sent("flask_signal_metrics.otlp.dropped", lost) == [1]
    assert sent("flask_signal_metrics_info", ours) == [1]


ROUTE = "/item/<int:item_id>"


def test_prefixed_classic_metrics_keep_their_otlp_names() -> None:
    """``SIGNAL_METRICS_PREFIX`` renames the Prometheus families, not the OTLP metrics."""
    app = make_app("prefixed")
    SignalMetrics(app, naming="classic", prefix="shop", serve_default_registry=False)
    app.test_client().get("/item/1")
    sink = Sink()
    assert bridge(sink).export() is True
    points = exported(sink, "http.server.request.duration")
    routes = {attributes(p).get("http.route") for p in points}
    assert ROUTE in routes, routes
    assert exported(sink, "shop_http_request_duration_seconds") == []
    assert exported(sink, "shop_http_request") == []  # the count repeats the histogram's
