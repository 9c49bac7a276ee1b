from __future__ import annotations

import gc
import logging
import math
import threading
import typing as t

import pytest
from blinker import Namespace
from flask import Flask
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from flask_signal_metrics import declared
from flask_signal_metrics import exclude
from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.tracing import spans as tracing

from .conftest import make_app
from .conftest import memory_provider
from .conftest import value


@pytest.fixture
def signals() -> Namespace:
    """A fresh namespace per test: blinker signals are process-wide by name."""
    return Namespace()


@pytest.fixture
def ext(registry: CollectorRegistry) -> SignalMetrics:
    return SignalMetrics(registry=registry)


class User:
    pass


def test_count_sends_with_bounded_labels(
    ext: SignalMetrics, registry: CollectorRegistry, signals: Namespace
) -> None:
    registered = signals.signal("user-registered")
    ext.count(
        registered,
        labels={
            "plan": lambda sender, **kw: kw["plan"],
            "source": lambda sender, **kw: type(sender).__name__,
        },
        allowed={"plan": {"free", "pro"}},
    )
    for plan in ["free", "free", "pro", "enterprise-custom-1234"]:
        registered.send(User(), plan=plan)
    name = "flask_signal_user_registered_total"
    assert value(registry, name, plan="free", source="User") == 2
    assert value(registry, name, plan="pro", source="User") == 1
    assert value(registry, name, plan="_OTHER", source="User") == 1


@pytest.mark.parametrize("sender", ["payment_gateway", None, 42, User()])
def test_any_sender_outside_a_request(
    ext: SignalMetrics, registry: CollectorRegistry, signals: Namespace, sender: object
) -> None:
    action = signals.signal("user-action")
    ext.count(action)
    action.send(sender, user_id="u1", action="checkout")
    assert value(registry, "flask_signal_user_action_total") == 1


def test_named_sender_only(
    ext: SignalMetrics, registry: CollectorRegistry, signals: Namespace
) -> None:
    access = signals.signal("access-event")
    ext.count(access, sender="dashboard_module")
    access.send("dashboard_module")
    access.send("billing_module")
    assert value(registry, "flask_signal_access_event_total") == 1


def test_decorator_connects_the_users_receiver_strongly(
    ext: SignalMetrics, registry: CollectorRegistry, signals: Namespace
) -> None:
    saved = signals.signal("model-saved")
    seen: list[object] = []

    def make_receiver() -> t.Callable[..., None]:
        def on_model_saved(sender: object, **extra: object) -> None:  # a closure
            seen.append(sender)

        return ext.count(saved, name="models_saved")(on_model_saved)

    make_receiver()
    gc.collect()  # blinker's default weak reference would have lost both
    saved.send("orders")
    assert seen == ["orders"]
    assert value(registry, "models_saved_total") == 1


def test_inside_a_request_the_count_reaches_metrics(
    registry: CollectorRegistry, signals: Namespace
) -> None:
    saved = signals.signal("model-saved")
    app = make_app()
    ext = SignalMetrics(app, registry=registry)
    ext.count(saved)

    @app.post("/save")
    def save() -> str:
        saved.send(app, model="Order")
        return "saved"

    assert app.test_client().post("/save").data == b"saved"
    body = app.test_client().get("/metrics").data.decode()
    assert "flask_signal_model_saved_total 1.0" in body


def test_served_by_every_app_of_the_extension(signals: Namespace) -> None:
    saved = signals.signal("model-saved")
    ext = SignalMetrics()
    apps = [make_app("a"), make_app("b")]
    for app in apps:
        ext.init_app(app)
    ext.count(saved)  # declared after init_app
    saved.send(None)
    for app in apps:
        assert "flask_signal_model_saved_total 1.0" in app.test_client().get("/metrics").text


def test_time_between_two_signals(
    ext: SignalMetrics, registry: CollectorRegistry, signals: Namespace
) -> None:
    started, finished = signals.signal("job-started"), signals.signal("job-finished")
    ext.time(
        started,
        finished,
        key=lambda sender, **kw: kw["job_id"],
        labels={"outcome": lambda sender, **kw: kw["outcome"]},
        allowed={"outcome": {"ok", "failed"}},
        buckets=[0.5, 1.0],
    )
    started.send("worker", job_id=1)
    started.send("worker", job_id=2)
    finished.send("worker", job_id=2, outcome="ok")
    finished.send("worker", job_id=1, outcome="boom")
    finished.send("worker", job_id=3, outcome="ok")  # never started
    name = "flask_signal_job_started_to_job_finished_duration_seconds"
    assert value(registry, f"{name}_count", outcome="ok") == 1
    assert value(registry, f"{name}_count", outcome="_OTHER") == 1
    assert value(registry, f"{name}_bucket", outcome="ok", le="0.5") == 1
    assert (
        value(
            registry, "flask_signal_metrics_signal_unmatched_total", metric=name, reason="no_start"
        )
        == 1
    )


def test_user_buckets_ending_in_inf_give_one_inf_bucket(
    ext: SignalMetrics, registry: CollectorRegistry, signals: Namespace
) -> None:
    started, finished = signals.signal("c"), signals.signal("d")
    ext.time(started, finished, key=lambda sender, **kw: 1, buckets=[1.0, float("inf")])
    name = "flask_signal_c_to_d_duration_seconds_bucket"
    les = [s.labels["le"] for m in registry.collect() for s in m.samples if s.name == name]
    assert les == ["1.0", "+Inf"]


def test_pending_starts_are_bounded(
    ext: SignalMetrics,
    registry: CollectorRegistry,
    signals: Namespace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(declared, "MAX_PENDING", 3)
    started, finished = signals.signal("a"), signals.signal("b")
    ext.time(started, finished, key=lambda sender, **kw: kw["n"], name="ab_seconds")
    for n in range(5):
        started.send(None, n=n)
    for n in range(5):
        finished.send(None, n=n)
    assert value(registry, "ab_seconds_count") == 3
    unmatched = "flask_signal_metrics_signal_unmatched_total"
    assert value(registry, unmatched, metric="ab_seconds", reason="dropped") == 2
    assert value(registry, unmatched, metric="ab_seconds", reason="no_start") == 2


def test_failures_never_reach_the_sender(
    ext: SignalMetrics,
    registry: CollectorRegistry,
    signals: Namespace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = signals.signal("model-saved")
    ext.count(saved, labels={"model": lambda sender, **kw: kw["model"]})  # KeyError below
    caplog.set_level(logging.ERROR, logger="flask_signal_metrics")
    for _ in range(3):
        saved.send(None)  # no model=: the label function raises
    assert value(registry, "flask_signal_metrics_signal_errors_total", signal="model-saved") == 3
    assert len([r for r in caplog.records if r.name == "flask_signal_metrics"]) == 1


def test_inside_a_failing_request_the_response_is_unchanged(signals: Namespace) -> None:
    saved = signals.signal("model-saved")
    bare, app = make_app(), make_app()
    ext = SignalMetrics(app, registry=CollectorRegistry())
    ext.count(saved, labels={"model": lambda sender, **kw: kw["model"]})
    for a in (bare, app):

        @a.get("/save")
        def save() -> str:
            saved.send(None)  # raises inside our receiver only
            return "saved"

    assert app.test_client().get("/save").data == bare.test_client().get("/save").data


def test_label_cap(registry: CollectorRegistry, signals: Namespace) -> None:
    ext = SignalMetrics(registry=registry, max_series=3)
    action = signals.signal("user-action")
    ext.count(action, labels={"user": lambda sender, **kw: kw["user_id"]})  # unbounded
    for n in range(10):
        action.send(None, user_id=f"u{n}")
    assert value(registry, "flask_signal_user_action_total", user="__overflow__") == 7
    assert (
        value(
            registry,
            "flask_signal_metrics_signal_overflow_total",
            metric="flask_signal_user_action_total",
        )
        == 7
    )


def test_concurrent_sends_are_counted_exactly(
    ext: SignalMetrics, registry: CollectorRegistry, signals: Namespace
) -> None:
    action = signals.signal("user-action")
    ext.count(action, labels={"kind": lambda sender, **kw: kw["kind"]})

    def send() -> None:
        for n in range(1000):
            action.send(None, kind=str(n % 3))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    total = sum(value(registry, "flask_signal_user_action_total", kind=str(k)) for k in range(3))
    assert total == 4000


@pytest.mark.parametrize(
    ("call", "error", "fix"),
    [
        (
            lambda e, s: e.count(Namespace().signal("x"), labels={"le": lambda s, **k: 1}),
            ValueError,
            "none of",
        ),
        (
            lambda e, s: e.count(Namespace().signal("x"), labels={"a": "kw"}),
            TypeError,
            "function of",
        ),
        (
            lambda e, s: e.count(Namespace().signal("x"), allowed={"a": {"1"}}),
            ValueError,
            "declare a function",
        ),
        (lambda e, s: e.count(Namespace().signal("x"), name="bad name"), ValueError, "metric name"),
        (lambda e, s: e.count(s), ValueError, "anonymous signal"),
        (
            lambda e, s: e.time(Namespace().signal("a"), Namespace().signal("b"), key="id"),
            TypeError,
            "key=",
        ),
    ],
)
def test_bad_declarations_say_the_fix(
    ext: SignalMetrics, call: t.Callable[..., object], error: type[Exception], fix: str
) -> None:
    from blinker import Signal

    with pytest.raises(error, match=fix):
        call(ext, Signal())


def test_slug() -> None:
    assert declared.slug("model-saved") == "model_saved"
    assert declared.slug("User.Registered!") == "user_registered"


@pytest.mark.parametrize(
    ("buckets", "error", "fix"),
    [
        ([1.0, 0.5], ValueError, "strictly increasing"),
        ([0.5, 0.5, 1.0], ValueError, "no repeats"),
        ([math.nan, 1.0], ValueError, "finite numbers"),
        ([], ValueError, "at least one"),
        ("0.5", TypeError, "list of numbers"),
        ([0.5, "1"], TypeError, "numbers only"),
    ],
    ids=["unsorted", "duplicate", "nan", "empty", "string", "not-a-number"],
)
def test_bad_time_buckets_say_the_fix(
    ext: SignalMetrics,
    registry: CollectorRegistry,
    signals: Namespace,
    buckets: object,
    error: type[Exception],
    fix: str,
) -> None:
    started, finished = signals.signal("job-started"), signals.signal("job-finished")
    with pytest.raises(error, match=rf"time\(buckets=\.\.\.\) must .*{fix}"):
        ext.time(started, finished, key=lambda sender, **kw: 1, buckets=buckets)  # type: ignore[arg-type]
    # Nothing half-declared: no family, no receiver.
    assert not [m for m in registry.collect() if m.name.startswith("flask_signal_job")]
    assert not started.receivers and not finished.receivers


@pytest.mark.parametrize("allowed", ["free", b"free", 3], ids=["str", "bytes", "int"])
def test_allow_list_that_is_no_collection_of_strings_says_the_fix(
    ext: SignalMetrics, signals: Namespace, allowed: object
) -> None:
    # {"plan": "free"} read as a set of characters would allow "f", "r", "e".
    with pytest.raises(
        TypeError, match=r"allowed\['plan'\] must be a collection of strings, e\.g\."
    ):
        ext.count(
            signals.signal("plan-chosen"),
            labels={"plan": lambda sender, **kw: kw["plan"]},
            allowed={"plan": allowed},  # type: ignore[dict-item]
        )


class TracedExtension(t.NamedTuple):
    """An extension traced through its own SDK provider, not yet on any app."""

    ext: SignalMetrics
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def app(self) -> Flask:
        """A fresh app of this extension."""
        app = make_app()
        self.ext.init_app(app)
        return app

    def events(self) -> list[tuple[str, str, dict[str, object]]]:
        """(span, event, attributes) of every declared send's event exported."""
        return [
            (span.name, event.name, dict(event.attributes or {}))
            for span in self.exporter.get_finished_spans()
            for event in span.events
            if event.name == "flask.signal"
        ]


@pytest.fixture
def traced_ext() -> t.Iterator[TracedExtension]:
    """A fresh provider and extension (registry included) per test."""
    provider, exporter = memory_provider()
    ext = SignalMetrics(tracer_provider=provider, serve_default_registry=False)
    yield TracedExtension(ext, provider, exporter)
    provider.shutdown()


def test_sends_in_a_traced_request_are_span_events(
    traced_ext: TracedExtension, signals: Namespace
) -> None:
    registered = signals.signal("user-registered")
    started, finished = signals.signal("job-started"), signals.signal("job-finished")
    ext = traced_ext.ext
    ext.count(
        registered,
        labels={"plan": lambda sender, **kw: kw["plan"]},
        allowed={"plan": {"free", "pro"}},
    )
    ext.time(
        started,
        finished,
        key=lambda sender, **kw: kw["job_id"],
        labels={"outcome": lambda sender, **kw: kw["outcome"]},
    )
    app = traced_ext.app()

    @app.get("/send")
    def send() -> str:
        registered.send(None, plan="free", email="secret@example.com")
        registered.send(None, plan="enterprise-1234")
        started.send(None, job_id=1)
        finished.send(None, job_id=1, outcome="ok")
        finished.send(None, job_id=2, outcome="ok")  # never started: no labels taken
        return "sent"

    assert app.test_client().get("/send").text == "sent"
    count = "flask_signal_user_registered_total"
    timed = "flask_signal_job_started_to_job_finished_duration_seconds"
    name, metric, label = "flask.signal.name", "flask.signal.metric", "flask.signal.label."
    span = "GET /send"
    assert traced_ext.events() == [
        (span, "flask.signal", {name: "user-registered", metric: count, label + "plan": "free"}),
        (span, "flask.signal", {name: "user-registered", metric: count, label + "plan": "_OTHER"}),
        (span, "flask.signal", {name: "job-started", metric: timed}),
        (span, "flask.signal", {name: "job-finished", metric: timed, label + "outcome": "ok"}),
        (span, "flask.signal", {name: "job-finished", metric: timed}),
    ]


def test_a_span_events_label_values_are_text_every_exporter_takes(
    traced_ext: TracedExtension, signals: Namespace
) -> None:
    lone = signals.signal("lone-surrogate")
    traced_ext.ext.count(lone, labels={"value": lambda sender, **kw: kw["value"]})
    app = traced_ext.app()

    @app.get("/lone")
    def lone_view() -> str:
        lone.send(None, value="x\udcff")  # e.g. from a JSON "\\udcff"
        return "sent"

    assert app.test_client().get("/lone").text == "sent"
    ((_, _, attributes),) = traced_ext.events()
    assert attributes["flask.signal.label.value"] == "x\ufffd"


Where = t.Literal["outside a request", "excluded request", "other extension", "tracing off"]


@pytest.mark.parametrize("where", t.get_args(Where))
def test_span_events_only_in_requests_the_extension_traces(
    traced_ext: TracedExtension, signals: Namespace, where: Where
) -> None:
    saved = signals.signal("model-saved")
    traced_ext.ext.count(saved)

    def send() -> str:
        saved.send(None)
        return "sent"

    @exclude
    def send_excluded() -> str:
        return send()

    traced = traced_ext.app()
    traced.add_url_rule("/send", view_func=send)
    traced.add_url_rule("/excluded", view_func=send_excluded)
    elsewhere = make_app("elsewhere")
    if where == "other extension":
        SignalMetrics(elsewhere, tracer_provider=traced_ext.provider, serve_default_registry=False)
    elif where == "tracing off":
        elsewhere.config["SIGNAL_METRICS_TRACING"] = False
        traced_ext.ext.init_app(elsewhere)
    elsewhere.add_url_rule("/send", view_func=send)
    scenarios: dict[Where, t.Callable[[], str]] = {
        "outside a request": send,
        "excluded request": lambda: traced.test_client().get("/excluded").text,
        "other extension": lambda: elsewhere.test_client().get("/send").text,
        "tracing off": lambda: elsewhere.test_client().get("/send").text,
    }
    # A current, recording span around the send: a job's, or a WSGI middleware's.
    with traced_ext.provider.get_tracer("test").start_as_current_span("job"):
        assert scenarios[where]() == "sent"
    assert traced.test_client().get("/send").text == "sent"  # the control
    assert [(span, event) for span, event, _ in traced_ext.events()] == [
        ("GET /send", "flask.signal")
    ]


def test_a_failing_span_event_never_reaches_the_sender(
    traced_ext: TracedExtension,
    signals: Namespace,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("exporter gone")

    monkeypatch.setattr(tracing, "span_event", broken)
    saved = signals.signal("model-saved")
    traced_ext.ext.count(saved)
    app = traced_ext.app()

    @app.get("/send")
    def send() -> str:
        saved.send(None)
        return "sent"

    caplog.set_level(logging.ERROR, logger="flask_signal_metrics")
    for _ in range(2):
        assert app.test_client().get("/send").text == "sent"
    body = app.test_client().get("/metrics").text
    assert "flask_signal_model_saved_total 2.0" in body  # recorded before the event
    assert 'flask_signal_metrics_signal_errors_total{signal="model-saved"} 2.0' in body
    assert len([r for r in caplog.records if r.name == "flask_signal_metrics"]) == 1
