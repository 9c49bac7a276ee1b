"""``opentelemetry-instrument`` finds SignalMetricsInstrumentor by its entry point.

Real ``opentelemetry-instrument flask run`` and ``... gunicorn`` processes,
with opentelemetry-distro's configurator and the SDK's console exporter:
the spans are read back from their output.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import typing as t
import urllib.request
from pathlib import Path

import pytest

from ..conftest import free_port
from ..conftest import IN_CI
from ..servers import running
from ..servers import wait_for

pytestmark = pytest.mark.real

WARNING = "makes none (no duplicates)"
#: The venv's scripts, as a deployment runs them (``opentelemetry-instrument gunicorn ...``).
BIN = Path(sys.executable).parent


def _instrument() -> str:
    found = shutil.which("opentelemetry-instrument", path=str(BIN))
    if found is None:
        message = "opentelemetry-instrument not found: run .ci/setup"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def _spans(log: str) -> list[dict[str, t.Any]]:
    """The spans the console exporter printed (each a JSON object from a line's start)."""
    decoder = json.JSONDecoder()
    found = []
    for start in re.finditer(r"^\{", log, re.MULTILINE):
        try:
            span, _ = decoder.raw_decode(log, start.start())
        except ValueError:
            continue
        if isinstance(span, dict) and {"context", "kind", "name"} <= span.keys():
            found.append(span)
    return found


def _serve(
    command: list[str], tmp: Path, port: int, disabled: str
) -> tuple[list[dict[str, t.Any]], str]:
    """Run ``command`` under opentelemetry-instrument, send 3 requests, return spans and log."""
    env = {
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled,
    }
    log = tmp / "server.log"
    base = f"http://127.0.0.1:{port}"
    with running([_instrument(), *command], log, env=env) as process:
        wait_for(base + "/healthz", 60, process)
        for path in ("/items/3", "/items/4"):
            with urllib.request.urlopen(base + path, timeout=10) as response:
                assert response.read() == f"item {path[-1]}".encode()
        deadline = time.monotonic() + 30
        while len(_spans(log.read_text(errors="replace"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    text = log.read_text(errors="replace")
    return [s for s in _spans(text) if s["kind"] == "SpanKind.SERVER"], text


def _ours(span: dict[str, t.Any]) -> bool:
    # opentelemetry-instrumentation-flask, in its default mode, says "http.method".
    return "http.request.method" in span["attributes"] and "http.method" not in span["attributes"]


@pytest.mark.parametrize(
    ("disabled", "ours", "warned"),
    [
        ("flask", True, False),  # ours alone: opentelemetry-instrumentation-flask switched off
        ("", False, True),  # both: theirs makes the span, ours none, with a warning
        ("flask_signal_metrics", False, False),  # ours switched off
    ],
)
def test_flask_run(tmp_path: Path, disabled: str, ours: bool, warned: bool) -> None:
    port = free_port()
    command = [str(BIN / "flask"), "--app", "examples.otel_auto", "run", "--port", str(port)]
    spans, log = _serve(command, tmp_path, port, disabled)
    names = sorted(span["name"] for span in spans)
    assert names == ["GET /healthz", "GET /items/<int:item_id>", "GET /items/<int:item_id>"], log
    assert [_ours(span) for span in spans] == [ours] * 3
    assert (WARNING in log) is warned
    assert {span["resource"]["attributes"]["service.name"] for span in spans} == {"shop"}


def test_gunicorn(tmp_path: Path) -> None:
    port = free_port()
    command = [
        str(BIN / "gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}",
        "--no-control-socket", "examples.otel_auto:app",
    ]  # fmt: skip
    spans, log = _serve(command, tmp_path, port, "flask")
    assert sorted(span["name"] for span in spans) == [
        "GET /healthz",
        "GET /items/<int:item_id>",
        "GET /items/<int:item_id>",
    ], log
    assert all(_ours(span) for span in spans)
    route = [s for s in spans if s["name"] == "GET /items/<int:item_id>"]
    assert [s["attributes"]["http.route"] for s in route] == ["/items/<int:item_id>"] * 2
