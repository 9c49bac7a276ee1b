"""configure_otlp end to end, on a real collector, rotel (:mod:`.otlp.setup`)."""

from __future__ import annotations

import concurrent.futures
import typing as t
import urllib.request
from pathlib import Path

import pytest

from ..conftest import free_port
from ..servers import example_shop
from ..servers import rotel

if t.TYPE_CHECKING:
    pass

from .conftest import bridge
from .conftest import driver
from .conftest import export_threads
from .conftest import finish
from .conftest import latest
from .conftest import N
from .conftest import otlp_env
from .conftest import PARENT_ID
from .conftest import scraped
from .conftest import Sink
from .conftest import STATUSES
from .conftest import TRACE_ID

pytestmark = pytest.mark.real


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_and_metrics_arrive_at_rotel(tmp_path: Path, protocol: str) -> None:
    with rotel(tmp_path) as collector:
        result = finish(driver("requests", N, otlp_env(collector, protocol)))
        assert result["flushed"] is True
        assert result["statuses"] == STATUSES
        collector.wait(lambda c: len(c.spans()) >= N + N // 5, 30, f"{N} server spans")
        collector.wait(
            lambda c: any(p["metric"] == "http.server.request.duration" for p in c.points()),
            30,
            "the duration histogram",
        )
        spans, points = collector.spans(), collector.points()
    servers = [s for s in spans if s["kind"] == "SPAN_KIND_SERVER"]
    assert len(servers) == N
    assert {s["name"] for s in servers} == {
        "GET /item/<int:item_id>",
        "GET /page",
        "GET /boom",
        "GET",
    }
    assert {s["trace_id"] for s in servers} == {TRACE_ID}
    assert {s["parent_id"] for s in servers} == {PARENT_ID}
    boom = next(s for s in servers if s["name"] == "GET /boom")
    assert boom["attributes"]["error.type"] == "ValueError"
    assert boom["attributes"]["http.response.status_code"] == 500
    assert boom["status_code"] == "STATUS_CODE_ERROR"
    item = next(s for s in servers if s["name"] == "GET /item/<int:item_id>")
    assert item["attributes"]["http.route"] == "/item/<int:item_id>"
    assert item["attributes"]["url.path"] in ("/item/1", "/item/2")
    assert item["attributes"]["http.request.method"] == "GET"
    assert item["resource"]["service.name"] == "shop"
    assert item["resource"]["deployment.environment.name"] == "ci"
    renders = [s for s in spans if s["name"] == "render __string__"]
    assert len(renders) == N // 5
    assert {s["parent_id"] for s in renders} <= {s["id"] for s in servers}

    # OTLP carries the same counts and sums as /metrics.
    prom = scraped(result["metrics"])
    durations = latest(points, "http.server.request.duration")
    assert {p["unit"] for p in durations} == {"s"}
    for point in durations:
        a = point["attributes"]
        key = (
            ("error_type", a.get("error.type", "")),
            ("http_request_method", a["http.request.method"]),
            ("http_response_status_code", str(a["http.response.status_code"])),
            ("http_route", a.get("http.route", "")),
            ("url_scheme", a["url.scheme"]),
        )
        assert point["count"] == prom[("http_server_request_duration_seconds_count", key)]
        assert point["sum"] == pytest.approx(
            prom[("http_server_request_duration_seconds_sum", key)]
        )
    assert sum(p["count"] for p in durations) == N
    # The /metrics exemplars travel too: each links to a server span rotel got.
    exemplars = [e for p in durations for e in p.get("exemplars", [])]
    assert exemplars and {e["Trace ID"] for e in exemplars} == {TRACE_ID}
    assert {e["Span ID"] for e in exemplars} <= {s["id"] for s in servers}
    (shown,) = latest(points, "flask_signal_page_shown")  # a declared app signal
    assert shown["value"] == N // 5 == prom[("flask_signal_page_shown_total", ())]
    names = {p["metric"] for p in points}
    assert {"http.server.active_requests", "flask.request.exceptions",
            "flask.template.render.duration", "flask.flashed_messages"} <= names  # fmt: skip


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_preloaded_workers_each_export_and_flush_at_exit(tmp_path: Path, worker_class: str) -> None:
    """gunicorn --preload, 3 workers: configure_otlp ran in the master, before the fork.

    Export is held back (60 s intervals), so what arrives is what each worker
    flushed when it exited on SIGTERM. The spans come from at least two
    service.instance.ids (which workers the kernel hands connections to is
    not ours to fix), and the workers' counts add up to /metrics'.
    """
    n = 60
    with rotel(tmp_path) as collector:
        env = {
            **otlp_env(collector, "http/protobuf"),
            "OTEL_BSP_SCHEDULE_DELAY": "60000",
            "WEB_CONCURRENCY": "3",
            "WORKER_CLASS": worker_class,
        }
        with example_shop(tmp_path, "--graceful-timeout", "10", "--preload", env=env) as shop:
            base = shop.base
            # Concurrent clients on a route that takes 20 ms: every worker serves.
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(_get, [f"{base}/slow?ms=20"] * n))
            assert statuses == [200] * n
            text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
            served = sum(
                value
                for (name, labels), value in scraped(text).items()
                if name == "http_server_request_duration_seconds_count"
                and dict(labels)["http_route"] == "/slow"
            )
            assert served == n
        # gunicorn stopped (SIGTERM): every worker exited normally and flushed.
        collector.wait(
            lambda c: len([s for s in c.spans() if s["name"].startswith("GET /slow")]) >= n,
            30,
            f"{n} spans flushed at exit",
        )
        collector.wait(
            lambda c: (
                sum(
                    p["count"]
                    for p in c.points()
                    if p["metric"] == "http.server.request.duration"
                    and p["attributes"].get("http.route") == "/slow"
                )
                >= n
            ),
            30,
            "the workers' final metrics",
        )
        spans, points = collector.spans(), collector.points()
    products = [s for s in spans if s["name"].startswith("GET /slow")]
    assert len(products) == n
    instances = {s["resource"]["service.instance.id"] for s in products}
    assert len(instances) >= 2  # more than one worker served, each its own id
    durations = [
        p
        for p in latest(points, "http.server.request.duration")
        if p["attributes"].get("http.route") == "/slow"
    ]
    per_instance: dict[str, int] = {}
    for point in durations:
        instance = point["resource"]["service.instance.id"]
        per_instance[instance] = per_instance.get(instance, 0) + point["count"]
    assert set(per_instance) == instances
    assert sum(per_instance.values()) == n  # each worker its own series; they add up


def test_a_second_global_provider_is_refused_with_the_fix() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    result = finish(driver("twice", 0, env))
    assert "A global TracerProvider is already set" in result["refused"]
    assert "configure_otlp(traces=False)" in result["refused"]
    assert result["metrics_only"] is True


def test_shutdown_ends_the_spans_even_when_the_metrics_side_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace import TracerProvider

    from flask_signal_metrics.otlp.setup import OTLPExport

    class Seen(SpanProcessor):
        shut = False

        def shutdown(self) -> None:
            self.shut = True

    seen = Seen()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(seen)
    OTLPExport(provider, bridge(Sink(shutdown_raises=True))).shutdown()
    assert seen.shut, "the tracer provider was not shut down: its last spans are lost"
    assert any("OTLP metrics shutdown raised" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("disabled", ["true", " TRUE "], ids=["true", "TRUE-spaced"])
def test_sdk_disabled_starts_nothing(disabled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    from flask_signal_metrics import configure_otlp

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_SDK_DISABLED", disabled)
    handle = configure_otlp()
    assert (handle.tracer_provider, handle.metrics) == (None, None)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert export_threads() == []
    assert handle.force_flush() is True
    handle.shutdown()  # nothing to stop
