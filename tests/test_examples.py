"""Each example runs and shows what it claims."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from queue import Empty
from queue import Queue

import pytest
from flask import Flask

from examples.app import app as shop
from examples.factory import create_app

from .conftest import free_port
from .conftest import ROOT
from .conftest import value


def _shop_value(name: str, **labels: str) -> float:
    return value(shop.extensions["signal_metrics"].metrics.registry, name, **labels)


@pytest.mark.parametrize(
    ("method", "path", "status", "route"),
    [
        ("GET", "/", 200, "/"),
        ("GET", "/items/2", 200, "/items/<int:item_id>"),
        ("GET", "/items/42", 404, "/items/<int:item_id>"),
        ("POST", "/items/1/buy", 302, "/items/<int:item_id>/buy"),
        ("POST", "/items/2/buy", 409, "/items/<int:item_id>/buy"),
        ("GET", "/boom", 500, "/boom"),
        ("GET", "/slow?ms=1", 200, "/slow"),
        ("GET", "/stream", 200, "/stream"),
        ("GET", "/missing", 404, ""),
    ],
)
def test_shop_routes(method: str, path: str, status: int, route: str) -> None:
    labels = {
        "http_request_method": method,
        "http_route": route,
        "http_response_status_code": str(status),
        "url_scheme": "http",
        "error_type": "RuntimeError" if status == 500 else "",
    }
    name = "http_server_request_duration_seconds_count"
    before = _shop_value(name, **labels)
    response = shop.test_client().open(path, method=method)
    response.get_data()  # a stream is over once read
    response.close()
    assert response.status_code == status
    assert _shop_value(name, **labels) == before + 1


def test_shop_health_check_is_not_measured() -> None:
    name = "http_server_request_duration_seconds_count"
    assert shop.test_client().get("/healthz").data == b"ok"
    assert (
        _shop_value(
            name,
            http_request_method="GET",
            http_route="/healthz",
            http_response_status_code="200",
            url_scheme="http",
            error_type="",
        )
        == 0
    )


def test_factory_apps() -> None:
    app = create_app({"TESTING": True})
    assert isinstance(app, Flask)
    assert app.test_client().get("/hello/you").data == b"hello you"
    assert b'service="factory-demo"' in app.test_client().get("/metrics").data


@pytest.mark.real
def test_demo_runs_and_says_where_to_look() -> None:
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "examples.demo", "--port", str(port), "--rounds", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        # Its own process group: whatever happens, the demo, its shop and its
        # collector are stopped at the end (they hold the stdout pipe).
        start_new_session=True,
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        # Read on a thread: a demo that hangs without printing must not hang the test.
        queue: Queue[str] = Queue()
        stdout = demo.stdout

        def pump() -> None:
            for output in stdout:
                queue.put(output)

        threading.Thread(target=pump, daemon=True).start()
        while time.monotonic() < deadline:
            try:
                line = queue.get(timeout=deadline - time.monotonic())
            except Empty:
                break
            lines.append(line)
            if line.startswith("Serving until"):
                break
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/metrics" in output, output
        assert "Sent 29 measured requests" in output
        # Traced too: exemplars on /metrics, spans at the demo's OTLP collector.
        assert 'trace_id="' in output
        received = re.search(r"collector \(rotel\) received (\d+) spans", output)
        assert received is not None and int(received.group(1)) >= 29, output
        assert "GET /items/<int:item_id>" in output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"http_server_request_duration_seconds_count" in response.read()
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # anything the demo left running
            os.killpg(demo.pid, signal.SIGKILL)
        if demo.stdout is not None:
            demo.stdout.close()
    assert demo.returncode == 0
