"""``flask signal-metrics report`` against in-process, live and multiprocess numbers."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import typing as t
from pathlib import Path

import pytest
from blinker import Namespace
from flask import redirect
from prometheus_client import CollectorRegistry
from werkzeug.serving import make_server

from examples import traffic
from flask_signal_metrics import SignalMetrics

from .conftest import free_port
from .conftest import make_app
from .conftest import ROOT
from .servers import gunicorn


def _flask(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``flask`` command line, as a user runs it in a shell."""
    return subprocess.run(
        [sys.executable, "-m", "flask", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_report_in_process() -> None:
    saved = Namespace().signal("model-saved")
    app = make_app()
    ext = SignalMetrics(app, registry=CollectorRegistry(), max_series=50)
    ext.count(saved)
    client = app.test_client()
    for path in ["/item/1", "/item/2", "/nope", "/boom"]:
        client.get(path)
    saved.send(None)
    result = app.test_cli_runner().invoke(args=["signal-metrics", "report", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["signals"]["flask"][0] == "request-started"
    assert data["signals"]["app"] == ["model-saved"]
    families = {f["name"]: f for f in data["families"]}
    duration = families["http_server_request_duration_seconds"]
    assert duration["series"] == 3  # /item/<int:item_id> 200, unmatched 404, /boom 500
    assert duration["labels"]["http_route"] == 3
    assert families["flask_signal_model_saved"]["series"] == 1
    assert data["max_series"] == 50
    assert data["nearest_cap"][0]["of_cap"] > 0
    assert set(data["receiver_errors"]) >= {"request-started", "request-tearing-down"}
    assert not any(data["receiver_errors"].values())
    text = app.test_cli_runner().invoke(args=["signal-metrics", "report"]).output
    assert "the app's own: model-saved" in text
    assert "Receiver errors: none" in text


@pytest.mark.real
def test_report_on_a_running_app(tmp_path: Path) -> None:
    with gunicorn("examples.app:app", tmp_path) as base:
        expected = traffic.drive(base)
        result = _flask(
            "--app",
            "examples.app",
            "signal-metrics",
            "report",
            "--url",
            base + "/metrics",
            "--json",
        )
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        families = {f["name"]: f for f in data["families"]}
        # one series per (method, route, status, error type) the traffic produced
        assert families["http_server_request_duration_seconds"]["series"] == len(expected)
        assert families["flask_template_render_duration_seconds"]["series"] == 2
        assert data["overflow"] == {name: 0 for name in data["overflow"]}
        assert data["source"] == base + "/metrics"
        text = _flask(
            "--app", "examples.app", "signal-metrics", "report", "--url", base + "/metrics"
        )
        assert "http_server_request_duration_seconds" in text.stdout
        assert f"{len(expected)} series" in text.stdout


def test_report_on_a_multiprocess_directory(tmp_path: Path) -> None:
    # A worker process in prometheus_client's multiprocess mode records app
    # signals; the report reads the directory it leaves behind.
    worker = (
        "from examples.model_saved import app\n"
        "c = app.test_client()\n"
        "for item in ('a', 'b', 'c'):\n"
        "    assert c.post('/orders/' + item).status_code == 201\n"
    )
    run = subprocess.run(
        [sys.executable, "-W", "ignore::RuntimeWarning", "-c", worker],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr
    assert list(tmp_path.glob("*.db"))
    result = _flask(
        "--app", "examples.model_saved", "signal-metrics", "report",
        "--multiproc-dir", str(tmp_path), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    families = {f["name"]: f for f in data["families"]}
    assert families["flask_signal_model_saved"]["series"] == 1
    assert families["flask_signal_model_saved"]["labels"] == {"model": 1}


def test_unreachable_url_is_a_clear_error() -> None:
    app = make_app()
    SignalMetrics(app, registry=CollectorRegistry())
    result = app.test_cli_runner().invoke(
        args=["signal-metrics", "report", "--url", "http://127.0.0.1:9/metrics"]
    )
    assert result.exit_code == 1
    assert "Cannot read http://127.0.0.1:9/metrics" in result.output


@pytest.mark.parametrize(
    "credentials",
    [{"bearer_token": "a-token-long-enough-1234"}, {"basic_auth": ("ops", "a-long-password-123")}],
    ids=["bearer", "basic"],
)
def test_report_reads_its_apps_guarded_metrics(credentials: dict[str, t.Any]) -> None:
    """The app's own credentials, from its config, open its /metrics to the report."""
    port = free_port()
    app = make_app()
    SignalMetrics(app, registry=CollectorRegistry(), port=port, **credentials)
    server = app.extensions["signal_metrics"].server
    try:
        app.test_client().get("/item/1")
        url = f"http://127.0.0.1:{port}/metrics"
        result = app.test_cli_runner().invoke(args=["signal-metrics", "report", "--url", url])
        assert result.exit_code == 0, result.output
        assert "http_server_request_duration_seconds" in result.output
    finally:
        server.shutdown()
        server.server_close()


def test_report_keeps_the_credentials_from_where_a_redirect_points() -> None:
    seen: list[str | None] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            if self.path == "/first":  # a redirect within the other host: still not the app
                self.send_response(302)
                self.send_header("Location", "/second")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"# no metrics here\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: t.Any) -> None:
            pass

    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    app = make_app()
    SignalMetrics(app, registry=CollectorRegistry(), bearer_token="a-token-long-enough-1234")

    @app.get("/moved")
    def moved() -> t.Any:
        return redirect(f"http://127.0.0.1:{elsewhere.server_port}/first")

    port = free_port()
    server = make_server("127.0.0.1", port, app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}/moved"
        app.test_cli_runner().invoke(args=["signal-metrics", "report", "--url", url])
    finally:
        server.shutdown()
        elsewhere.shutdown()
        elsewhere.server_close()
    assert seen == [None, None]


def test_report_follows_a_redirect_within_its_app_with_the_credentials() -> None:
    app = make_app()
    SignalMetrics(app, registry=CollectorRegistry(), bearer_token="a-token-long-enough-1234")
    app.get("/old-metrics")(lambda: redirect("/metrics"))
    port = free_port()
    server = make_server("127.0.0.1", port, app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}/old-metrics"
        result = app.test_cli_runner().invoke(args=["signal-metrics", "report", "--url", url])
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert "http_server_request_duration_seconds" in result.output
