"""Template renders and flashed messages."""

from __future__ import annotations

from flask import Flask
from flask import render_template
from flask.testing import FlaskClient
from jinja2 import DictLoader
from prometheus_client import CollectorRegistry

from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.labels import OVERFLOW
from flask_signal_metrics.state import get_state

from ..conftest import make_app
from ..conftest import total_requests
from ..conftest import value


def test_templates_and_flashes(client: FlaskClient, registry: CollectorRegistry) -> None:
    client.get("/page")
    client.get("/page")
    assert (
        value(registry, "flask_template_render_duration_seconds_count", template="__string__") == 2
    )
    assert value(registry, "flask_flashed_messages_total", category="success") == 2
    assert value(registry, "flask_flashed_messages_total", category="message") == 2


def test_named_templates_with_inheritance() -> None:
    from examples.app import app as shop

    shop_registry = shop.extensions["signal_metrics"].metrics.registry

    def renders(template: str) -> float:
        name = "flask_template_render_duration_seconds_count"
        return value(shop_registry, name, template=template)

    before = renders("item.html"), renders("base.html")
    assert shop.test_client().get("/items/1").status_code == 200
    # Jinja renders base.html inside item.html: one render, named by the template asked for.
    assert renders("item.html") == before[0] + 1
    assert renders("base.html") == before[1] == 0


def test_renders_past_the_cap_are_counted_as_overflow_each_time(
    registry: CollectorRegistry,
) -> None:
    # A template's series is kept for later renders (State.renders) only when
    # it is its own: the overflow series is looked up each time, which counts.
    app = make_app()
    app.config["SIGNAL_METRICS_MAX_SERIES"] = 2
    SignalMetrics(app, registry=registry, serve_default_registry=False)
    app.jinja_env.loader = DictLoader({f"t{n}.html": f"{n}" for n in range(4)})

    @app.get("/render/<int:n>")
    def render(n: int) -> str:
        return render_template(f"t{n}.html")

    client = app.test_client()
    for _ in range(3):
        for n in range(4):
            assert client.get(f"/render/{n}").text == str(n)
    assert sorted(get_state(app).renders, key=str) == ["t0.html", "t1.html"]
    name = "flask_template_render_duration_seconds_count"
    counts = [value(registry, name, template=f"t{n}.html") for n in range(4)]
    assert counts == [3, 3, 0, 0]  # no series of their own
    assert value(registry, name, template=OVERFLOW) == 6
    overflowed = "flask_signal_metrics_series_overflow_total"
    assert value(registry, overflowed, metric="flask_template_render_duration_seconds") == 6


def test_template_rendered_outside_a_request(app: Flask, registry: CollectorRegistry) -> None:
    from flask import render_template_string

    with app.app_context():
        assert render_template_string("{{ 1 + 1 }}") == "2"
    assert (
        value(registry, "flask_template_render_duration_seconds_count", template="__string__") == 1
    )
    assert total_requests(registry) == 0
