"""Request shapes and servers: async views, the debug reloader, gunicorn's preload_app."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_signal_metrics import SignalMetrics

from .conftest import free_port
from .conftest import make_app
from .conftest import requests_counted
from .conftest import ROOT
from .conftest import value
from .servers import example_shop
from .servers import running
from .servers import wait_for


def _async_app(registry: CollectorRegistry) -> Flask:
    app = make_app()
    SignalMetrics(app, registry=registry)

    @app.get("/async/<int:n>")
    async def slow_async(n: int) -> str:
        await asyncio.sleep(0.05)
        return f"async {n}"

    @app.get("/async-boom")
    async def async_boom() -> str:
        await asyncio.sleep(0)
        raise KeyError("async")

    return app


def test_async_views_are_measured_like_sync_ones(registry: CollectorRegistry) -> None:
    client = _async_app(registry).test_client()
    assert client.get("/async/1").text == "async 1"
    assert client.get("/async-boom").status_code == 500
    assert requests_counted(registry, "/async/<int:n>", 200) == 1
    assert requests_counted(registry, "/async-boom", 500, error="KeyError") == 1
    labels = {
        "http_request_method": "GET",
        "http_route": "/async/<int:n>",
        "http_response_status_code": "200",
        "url_scheme": "http",
        "error_type": "",
    }
    assert value(registry, "http_server_request_duration_seconds_sum", **labels) >= 0.05


@pytest.mark.real
def test_debug_reloader_serves_metrics(tmp_path: Path) -> None:
    # prometheus-flask-exporter answers 404 here unless DEBUG_METRICS is set.
    port = free_port()
    args = [sys.executable, "-m", "flask", "--app", "examples.app", "run", "--debug",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with running(args, tmp_path / "flask-run.log", env={"FLASK_RUN_RELOAD": "1"}) as server:
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(base + "/healthz", 60, server)
            urllib.request.urlopen(base + "/items/1", timeout=5).read()
            with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
                body = response.read().decode()
            assert response.status == 200
            assert 'http_route="/items/<int:item_id>"' in body
        finally:
            # the reloader serves from a child process: stop it with its parent
            children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
            for pid in children.read_text().split() if children.exists() else []:
                os.kill(int(pid), signal.SIGTERM)


@pytest.mark.real
def test_gunicorn_preload_app(tmp_path: Path) -> None:
    with example_shop(tmp_path, "--preload") as shop:
        base = shop.base
        for n in range(60):
            urllib.request.urlopen(f"{base}/items/{n % 3 + 1}", timeout=5).read()
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            body = response.read().decode()
        line = [
            row
            for row in body.splitlines()
            if row.startswith("http_server_request_duration_seconds_count")
            and 'http_route="/items/<int:item_id>"' in row
            and 'http_response_status_code="200"' in row
        ]
        assert len(line) == 1 and line[0].endswith(" 60.0"), line


def _fetch(url: str, **headers: str) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def test_metrics_on_a_separate_port(registry: CollectorRegistry) -> None:
    port = free_port()
    token = "a-token-long-enough-1234"
    app = make_app()
    SignalMetrics(app, registry=registry, path=None, port=port, bearer_token=token)
    server = app.extensions["signal_metrics"].server
    try:
        app.test_client().get("/item/1")
        assert app.test_client().get("/metrics").status_code == 404  # not public
        base = f"http://127.0.0.1:{port}"
        assert _fetch(base + "/metrics")[0] == 401
        status, body = _fetch(base + "/metrics", Authorization=f"Bearer {token}")
        assert status == 200
        assert 'http_route="/item/<int:item_id>"' in body
        status, body = _fetch(
            base + "/", Authorization=f"Bearer {token}", Accept="application/openmetrics-text"
        )
        assert status == 200 and body.endswith("# EOF\n")
        req = urllib.request.Request(base + "/metrics", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 405
        info.value.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_in_use_is_an_error_before_the_app_changes(registry: CollectorRegistry) -> None:
    port = free_port()
    first = make_app("first")
    SignalMetrics(first, registry=registry, port=port)
    server = first.extensions["signal_metrics"].server
    try:
        second = make_app("second")
        rules = len(list(second.url_map.iter_rules()))
        with pytest.raises(
            OSError, match=f"SIGNAL_METRICS_PORT: cannot listen on 127.0.0.1:{port}"
        ):
            SignalMetrics(second, port=port)
        assert "signal_metrics" not in second.extensions
        assert len(list(second.url_map.iter_rules())) == rules
        SignalMetrics(second, port=free_port())  # fixed, the same app takes it
        second.extensions["signal_metrics"].server.server_close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_process_a_flask_command_started_opens_its_port(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It inherits FLASK_RUN_FROM_CLI, but it is no flask command (no click context)."""
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")
    port = free_port()
    app = make_app()
    SignalMetrics(app, registry=registry, port=port)
    server = app.extensions["signal_metrics"].server
    try:
        assert server is not None
        assert _fetch(f"http://127.0.0.1:{port}/metrics")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


_PORT_APP = """
import os
from flask import Flask
from flask_signal_metrics import SignalMetrics

app = Flask(__name__)
app.config["SIGNAL_METRICS_PORT"] = int(os.environ["METRICS_PORT"])
SignalMetrics(app)


@app.get("/hello")
def hello():
    return "hello"
"""


@pytest.mark.real
def test_separate_port_under_flask_run_and_other_flask_commands(tmp_path: Path) -> None:
    """The reloader's watcher and `flask routes` load the app without taking the port."""
    (tmp_path / "port_app.py").write_text(_PORT_APP)
    port, metrics_port = free_port(), free_port()
    env = {"METRICS_PORT": str(metrics_port), "PYTHONPATH": str(ROOT)}
    flask = [sys.executable, "-m", "flask", "--app", "port_app"]
    args = [*flask, "run", "--debug", "--host", "127.0.0.1", "--port", str(port)]
    with running(args, tmp_path / "flask-run.log", cwd=tmp_path, env=env) as server:
        try:
            wait_for(f"http://127.0.0.1:{metrics_port}/metrics", 60, server)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=5) as hello:
                assert hello.read() == b"hello"
            routes = subprocess.run(
                [*flask, "routes"], cwd=tmp_path, env={**os.environ, **env},
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert routes.returncode == 0, routes.stderr
            status, body = _fetch(f"http://127.0.0.1:{metrics_port}/metrics")
            assert status == 200
            counted = _count_rows(body, "/hello")
            assert len(counted) == 1 and counted[0].endswith(" 1.0"), counted
        finally:
            children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
            for pid in children.read_text().split() if children.exists() else []:
                os.kill(int(pid), signal.SIGTERM)


def test_a_process_forked_after_opening_the_port_is_told(
    registry: CollectorRegistry, tmp_path: Path
) -> None:
    """gunicorn's preload_app: the child has the parent's socket, not its thread."""
    port = free_port()
    app = make_app()
    SignalMetrics(app, registry=registry, path=None, port=port)
    server = app.extensions["signal_metrics"].server
    log = tmp_path / "child.log"
    handler = logging.FileHandler(log)  # inherited: the child's warning lands in the file
    logging.getLogger("flask_signal_metrics").addHandler(handler)
    try:
        pid = os.fork()
        if pid == 0:  # the child: did it let go of the parent's socket?
            os._exit(0 if server.socket.fileno() == -1 else 2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _fetch(f"http://127.0.0.1:{port}/metrics")[0] == 200  # the parent still serves
    finally:
        logging.getLogger("flask_signal_metrics").removeHandler(handler)
        handler.close()
        server.shutdown()
        server.server_close()
    said = log.read_text()
    assert f"SIGNAL_METRICS_PORT (port {port}) was opened by process {os.getpid()}" in said
    assert "start_metrics_server(port)" in said


def test_separate_port_is_refused_with_several_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flask_signal_metrics import extension

    monkeypatch.setattr(extension, "multiprocess", lambda: True)
    with pytest.raises(ValueError, match="start_metrics_server"):
        SignalMetrics(make_app(), port=free_port())


@pytest.mark.real
def test_process_group_server_sums_every_worker(tmp_path: Path) -> None:
    metrics_port, token = free_port(), "a-token-of-the-deployment"
    env = {"METRICS_PORT": str(metrics_port), "METRICS_BEARER_TOKEN": token}
    with example_shop(tmp_path, env=env) as shop:
        base = shop.base
        for n in range(40):
            urllib.request.urlopen(f"{base}/items/{n % 3 + 1}", timeout=5).read()
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        assert _fetch(url)[0] == 401
        status, body = _fetch(url, Authorization=f"Bearer {token}")
        assert status == 200
        rows = _count_rows(body, "/items/<int:item_id>")
        assert len(rows) == 1 and rows[0].endswith(" 40.0"), rows


def _count_rows(body: str, route: str) -> list[str]:
    """The request-count lines of ``route`` in a text exposition."""
    return [
        row
        for row in body.splitlines()
        if row.startswith("http_server_request_duration_seconds_count")
        and f'http_route="{route}"' in row
    ]
