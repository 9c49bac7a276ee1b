"""The docs' code samples run, and their configuration table is config's own list."""

from __future__ import annotations

import importlib
import logging
import re
import sys
import types
from pathlib import Path

import pytest
from blinker import Namespace
from docutils import nodes
from prometheus_client.parser import text_string_to_metric_families

from docs._ext import configtable
from flask_signal_metrics import config

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def fresh(name: str) -> types.ModuleType:
    """Import a sample anew, so each test gets its own app."""
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_the_config_table_lists_exactly_the_config_keys() -> None:
    listed = [name for name, _, _ in configtable.rows(config.KEYS)]
    assert listed == list(config.KEYS)
    for key in listed:  # each is a key load() knows: a bad value is refused by its own rule
        with pytest.raises((TypeError, ValueError)) as refused:
            config.load({key: object()}, {}, environ={})
        assert str(refused.value).startswith(key)
    with pytest.raises(ValueError, match="Unknown config key"):
        config.load({"SIGNAL_METRICS_NOT_A_KEY": 1}, {})
    table = configtable.table(config.KEYS, "key")
    first_cells = [row[0].astext() for row in table.findall(nodes.row)]
    assert first_cells == ["key", *config.KEYS]
    environ = [name for name, _, _ in configtable.rows(config.ENVIRON)]
    assert environ == list(config.ENVIRON)
    keyed = {k.field for k in config.KEYS.values()} | {k.field for k in config.ENVIRON.values()}
    assert keyed == set(config.Settings.__dataclass_fields__)


def test_every_key_the_docs_name_exists() -> None:
    pages = [*DOCS.glob("*.md"), ROOT / "README.md"]
    named = {m for p in pages for m in re.findall(r"SIGNAL_METRICS_[A-Z_]*[A-Z]", p.read_text())}
    assert named - set(config.KEYS) == set()


def test_every_description_is_one_sentence_or_two() -> None:
    for key in [*config.KEYS.values(), *config.ENVIRON.values()]:
        assert key.description.endswith(".") and "\n" not in key.description


def test_quickstart() -> None:
    client = fresh("docs.samples.quickstart").app.test_client()
    assert client.get("/items/3").status_code == 200
    assert client.get("/healthz").text == "ok"
    found = samples(client.get("/metrics").text)
    routes = {dict(labels).get("http_route") for (name, labels) in found}
    assert "/items/<int:item_id>" in routes and "/healthz" not in routes


def test_options() -> None:
    sample = fresh("docs.samples.options")
    client = sample.app.test_client()
    assert client.get("/nowhere").status_code == 404
    text = client.get("/metrics").text
    assert "flask_http_request_duration_seconds_bucket" in text and 'le="0.5"' in text


def test_views() -> None:
    sample = fresh("docs.samples.views")
    app = sample.create_app()
    client = app.test_client()
    assert client.post("/orders?kind=book").status_code == 201
    text = client.get("/metrics").text
    found = samples(text)
    assert found[("orders_total", (("kind", "book"), ("status", "201")))] == 1.0
    assert found[("view_seconds_count", (("view", "place_order"),))] == 1.0


def test_logging_filter(caplog: pytest.LogCaptureFixture) -> None:
    sample = fresh("docs.samples.logging_filter")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert sample.handler.filter(record)
    assert sample.handler.format(record) == "INFO [trace_id= span_id=] hello"
    sample.app.logger.removeHandler(sample.handler)


def test_app_signals(caplog: pytest.LogCaptureFixture) -> None:
    sample = fresh("docs.samples.app_signals")
    sample.user_registered.send("shop", plan="pro")
    sample.user_registered.send("shop", plan="gold")

    class Order:
        pass

    with caplog.at_level(logging.INFO, sample.__name__):
        sample.model_saved.send(Order())
    sample.job_started.send("worker", job_id=1)
    sample.job_finished.send("worker", job_id=1)
    found = samples(sample.app.test_client().get("/metrics").text)
    assert found[("flask_signal_user_registered_total", (("plan", "pro"),))] == 1
    assert found[("flask_signal_user_registered_total", (("plan", "_OTHER"),))] == 1
    assert found[("flask_signal_model_saved_total", (("model", "Order"),))] == 1
    assert found[("flask_signal_job_started_to_job_finished_duration_seconds_count", ())] == 1
    assert "saved" in caplog.text
    assert isinstance(sample.signals, Namespace)


def test_otlp_sample_with_the_sdk_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    sample = fresh("docs.samples.otlp")
    assert sample.otlp.force_flush() is True
    sample.otlp.shutdown()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_the_readme_quick_start_is_the_sample() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start\n\n```python\n", 1)[1].split("```\n", 1)[0]
    sample = (DOCS / "samples" / "quickstart.py").read_text()
    assert sample.split("\n", 4)[4] == block


def test_the_readme_opens_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = lines[lines.index("```sh") + 1 : lines.index("```sh") + 3]
    assert [c.split("#")[0].strip() for c in commands] == [
        "bash examples/demo.sh",
        "bash .ci/test",
    ]
    assert len(lines) <= 250
