"""meter_provider=: the HTTP server metrics through the OpenTelemetry metrics API."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import typing as t
import weakref
from pathlib import Path

import pytest
from flask import Flask
from opentelemetry import metrics
from opentelemetry import trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.util._once import Once
from prometheus_client import CollectorRegistry

from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.compat.opentelemetry import SignalMetricsInstrumentor

from ..conftest import make_app
from ..conftest import memory_provider
from ..conftest import requests_counted
from ..conftest import value


class Metered(t.NamedTuple):
    app: Flask
    reader: InMemoryMetricReader
    registry: CollectorRegistry


@pytest.fixture
def metered(registry: CollectorRegistry) -> t.Iterator[Metered]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    tracer_provider, _ = memory_provider()
    app = make_app()
    SignalMetrics(
        app,
        registry=registry,
        tracer_provider=tracer_provider,
        meter_provider=provider,
        serve_default_registry=False,
    )
    yield Metered(app, reader, registry)
    provider.shutdown()
    tracer_provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[t.Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[t.Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "flask_signal_metrics"
            assert scope.scope.schema_url == "https://opentelemetry.io/schemas/1.21.0"
            for metric in scope.metrics:
                found[f"{metric.name} [{metric.unit}]"] = list(metric.data.data_points)
    return found


def test_each_request_is_recorded_with_the_conventions_attributes(metered: Metered) -> None:
    client = metered.app.test_client()
    for path in ("/item/1", "/item/2"):
        assert client.get(path).status_code == 200
    metered.app.testing = False
    assert client.post("/echo", data=b"x" * 10).status_code == 200
    assert client.get("/boom").status_code == 500
    found = points(metered.reader)
    assert sorted(found) == [
        "http.server.active_requests [{request}]",
        "http.server.request.body.size [By]",
        "http.server.request.duration [s]",
        "http.server.response.body.size [By]",
    ]
    durations: list[HistogramDataPoint] = found["http.server.request.duration [s]"]
    by_attributes = {tuple(sorted((p.attributes or {}).items())): p.count for p in durations}
    base = {"http.request.method": "GET", "url.scheme": "http", "network.protocol.version": "1.1"}
    item = {**base, "http.route": "/item/<int:item_id>", "http.response.status_code": 200}
    boom = {
        **base,
        "http.route": "/boom",
        "http.response.status_code": 500,
        "error.type": "ValueError",
    }
    echo = {
        **base,
        "http.request.method": "POST",
        "http.route": "/echo",
        "http.response.status_code": 200,
    }
    assert by_attributes == {
        tuple(sorted(item.items())): 2,
        tuple(sorted(boom.items())): 1,
        tuple(sorted(echo.items())): 1,
    }
    assert list(durations[0].explicit_bounds)[:3] == [0.005, 0.01, 0.025]
    sizes: list[HistogramDataPoint] = found["http.server.request.body.size [By]"]
    assert sorted(p.sum for p in sizes) == [0, 0, 10]
    active: list[NumberDataPoint] = found["http.server.active_requests [{request}]"]
    assert {tuple(sorted((p.attributes or {}).items())): p.value for p in active} == {
        (("http.request.method", "GET"), ("url.scheme", "http")): 0,
        (("http.request.method", "POST"), ("url.scheme", "http")): 0,
    }
    # Prometheus as well, from the same receivers.
    assert requests_counted(metered.registry, "/item/<int:item_id>", 200) == 2


def test_exemplars_link_to_the_requests_span(metered: Metered) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    metered.app.test_client().get("/item/1", headers={"traceparent": traceparent})
    (point,) = points(metered.reader)["http.server.request.duration [s]"]
    (exemplar,) = point.exemplars
    assert f"{exemplar.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"


class Raising:
    """A meter provider whose instruments raise: a broken SDK view, say."""

    def get_meter(self, *args: object, **kwargs: object) -> Raising:
        return self

    def __getattr__(self, name: str) -> t.Any:
        def create(*args: object, **kwargs: object) -> Raising:
            return self

        return create

    def add(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("add")

    def record(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("record")


def test_a_raising_meter_is_counted_and_costs_nothing_else(registry: CollectorRegistry) -> None:
    tracer_provider, exporter = memory_provider()
    app = make_app()
    SignalMetrics(
        app,
        registry=registry,
        tracer_provider=tracer_provider,
        meter_provider=Raising(),  # type: ignore[arg-type]
    )
    response = app.test_client().get("/item/1")
    assert (response.status_code, response.text) == (200, "item 1")
    assert (
        value(registry, "flask_signal_metrics_receiver_errors_total", signal="request-tearing-down")
        == 1
    )
    # The meters record last: the request's metrics and span are whole.
    assert requests_counted(registry, "/item/<int:item_id>", 200) == 1
    assert (
        value(registry, "http_server_active_requests", http_request_method="GET", url_scheme="http")
        == 0
    )
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /item/<int:item_id>"
    assert not trace.get_current_span().get_span_context().is_valid
    tracer_provider.shutdown()


def test_a_meter_provider_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="meter_provider must be an OpenTelemetry MeterProvider"):
        SignalMetrics(make_app(), meter_provider="global")  # type: ignore[arg-type]


def test_the_instrumentor_records_to_a_global_provider_set_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As FlaskInstrumentor: the API's stand-in forwards to a provider an SDK sets afterwards."""
    # A fresh "set once" guard: set_meter_provider may run, undone after.
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", None)
    app = make_app()
    SignalMetricsInstrumentor().instrument_app(app)
    app.test_client().get("/item/1")  # before: nowhere to go
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    metrics.set_meter_provider(provider)
    app.test_client().get("/item/2")
    (point,) = points(reader)["http.server.request.duration [s]"]
    assert point.count == 1
    provider.shutdown()


def active(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    """``http.server.active_requests`` now, by (method, scheme)."""
    found: list[NumberDataPoint] = points(reader).get("http.server.active_requests [{request}]", [])
    return {
        (str(attributes["http.request.method"]), str(attributes["url.scheme"])): int(p.value)
        for p in found
        if (attributes := p.attributes or {})
    }


def test_active_requests_are_the_requests_in_flight(metered: Metered) -> None:
    seen: list[dict[tuple[str, str], int]] = []

    @metered.app.get("/now")
    def now() -> str:
        seen.append(active(metered.reader))
        return "ok"

    client = metered.app.test_client()
    assert client.get("/now").text == "ok"
    assert client.get("/now").text == "ok"
    assert seen == [{("GET", "http"): 1}, {("GET", "http"): 1}]
    assert active(metered.reader) == {("GET", "http"): 0}


def test_apps_on_one_provider_are_summed_and_a_removed_one_is_not_observed() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    outer, inner = make_app("outer"), make_app("inner")
    options: dict[str, t.Any] = {"meter_provider": provider, "tracing": False}
    SignalMetrics(outer, registry=CollectorRegistry(), **options)
    extension = SignalMetrics(inner, registry=CollectorRegistry(), **options)
    seen: list[dict[tuple[str, str], int]] = []

    @inner.get("/now")
    def now() -> str:
        seen.append(active(reader))
        return "ok"

    @outer.get("/nested")
    def nested() -> str:
        return inner.test_client().get("/now").text  # both apps have a request in flight

    assert outer.test_client().get("/nested").text == "ok"
    assert inner.test_client().post("/echo", data=b"x").status_code == 200
    assert seen == [{("GET", "http"): 2}]
    assert active(reader) == {("GET", "http"): 0, ("POST", "http"): 0}
    # Kept alive: what is tested is that remove_app stops its observation,
    # not that the garbage collector happened to drop its state.
    kept = inner.extensions["signal_metrics"]
    extension.remove_app(inner)
    assert kept.meters is not None
    # Only the outer app's requests are observed: it never had a POST.
    assert active(reader) == {("GET", "http"): 0}
    provider.shutdown()


_STAND_IN_RUN = """
import sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from tests.conftest import make_app
from flask_signal_metrics import SignalMetrics

def set_up(app, provider):
    SignalMetrics(app, registry=CollectorRegistry(), tracing=False, meter_provider=provider)

def active():
    data = reader.get_metrics_data()
    return [
        p.value
        for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
        if m.name == "http.server.active_requests" for p in m.data.data_points
    ]

reader = InMemoryMetricReader()
provider = MeterProvider([reader], shutdown_on_exit=False)
first, second = make_app("first"), make_app("second")
if sys.argv[1] == "stand-in first":
    set_up(first, metrics.get_meter_provider())  # the API's stand-in: no SDK yet
    metrics.set_meter_provider(provider)
    set_up(second, metrics.get_meter_provider())  # the SDK's provider itself
elif sys.argv[1] == "provider first":
    set_up(first, provider)  # the SDK's provider, before it is the global one
    set_up(second, metrics.get_meter_provider())  # the stand-in
    metrics.set_meter_provider(provider)
else:  # a test harness's reset between tests, then two apps on the new stand-in
    from opentelemetry.test.globals_test import reset_metrics_globals

    set_up(make_app("earlier"), metrics.get_meter_provider())
    metrics.set_meter_provider(MeterProvider([InMemoryMetricReader()], shutdown_on_exit=False))
    reset_metrics_globals()
    set_up(first, metrics.get_meter_provider())
    set_up(second, metrics.get_meter_provider())
    metrics.set_meter_provider(provider)
seen = []
second.get("/now")(lambda: seen.append(active()) or "ok")
first.get("/nested")(lambda: second.test_client().get("/now").text)
first.test_client().get("/nested")
print(seen, active())
"""


@pytest.mark.parametrize("order", ["stand-in first", "provider first", "after a reset"])
def test_apps_on_the_stand_in_and_on_the_provider_it_becomes_are_both_observed(
    order: str,
) -> None:
    # A process of its own: the API's stand-in and the global provider are set once.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))}
    out = subprocess.run(
        [sys.executable, "-c", _STAND_IN_RUN, order],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent.parent.parent,
        timeout=60,
        check=True,
    ).stdout
    assert out.strip() == "[[2]] [0]"


def test_a_provider_is_not_kept_alive_by_its_instrument() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    app = make_app()
    extension = SignalMetrics(
        app, registry=CollectorRegistry(), tracing=False, meter_provider=provider
    )
    app.test_client().get("/item/1")
    extension.remove_app(app)
    provider.shutdown()
    gone = weakref.ref(provider)
    del provider, reader, extension  # the extension keeps its options
    gc.collect()
    assert gone() is None
