"""The separate-port server: who may read it, and what slow clients can hold."""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import re
import socket
import subprocess
import sys
import threading
import time
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from flask import abort
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from flask_signal_metrics import port_server
from flask_signal_metrics import SignalMetrics
from flask_signal_metrics import start_metrics_server
from flask_signal_metrics.config import Settings

from .conftest import free_port
from .conftest import make_app
from .conftest import ROOT

TOKEN = "a-token-long-enough-1234"


def _fetch(url: str, **headers: str) -> int:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        e.close()
        return int(e.code)


def _forbid(view: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    """A login_required-style guard: nobody is logged in."""

    @functools.wraps(view)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        abort(403)

    return wrapper


@pytest.mark.parametrize("where", ["options", "config"])
def test_a_guard_the_port_cannot_run_is_refused(registry: CollectorRegistry, where: str) -> None:
    port = free_port()
    app = make_app()
    keys = {"SIGNAL_METRICS_DECORATOR": _forbid, "SIGNAL_METRICS_PORT": port}
    with pytest.raises(ValueError) as info:
        if where == "options":
            SignalMetrics(app, registry=registry, decorator=_forbid, port=port)
        else:
            app.config.update(keys)
            SignalMetrics(registry=registry).init_app(app)
    said = str(info.value)
    for named in [*keys, "SIGNAL_METRICS_BASIC_AUTH", "SIGNAL_METRICS_BEARER_TOKEN"]:
        assert named in said
    assert "or unset SIGNAL_METRICS_PORT" in said
    assert "signal_metrics" not in app.extensions
    with socket.socket() as probe:  # nothing listens: the port was never opened
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_guarded_route_with_a_port_that_takes_credentials(registry: CollectorRegistry) -> None:
    port = free_port()
    app = make_app()
    SignalMetrics(app, registry=registry, decorator=_forbid, port=port, bearer_token=TOKEN)
    server = app.extensions["signal_metrics"].server
    try:
        assert app.test_client().get("/metrics").status_code == 403
        base = f"http://127.0.0.1:{port}/metrics"
        assert _fetch(base) == 401
        assert _fetch(base, Authorization=f"Bearer {TOKEN}") == 200
    finally:
        server.shutdown()
        server.server_close()


_BASIC = "Basic " + base64.b64encode(b"scraper:pw-123").decode()


@pytest.mark.parametrize(
    ("options", "good", "bad"),
    [
        ({"basic_auth": ("scraper", "pw-123")}, _BASIC, f"Bearer {TOKEN}"),
        ({"bearer_token": TOKEN}, f"Bearer {TOKEN}", _BASIC),
    ],
    ids=["basic", "bearer"],
)
def test_start_metrics_server_takes_credentials(
    options: dict[str, t.Any], good: str, bad: str
) -> None:
    port = free_port()
    server = start_metrics_server(port, **options)
    try:
        base = f"http://127.0.0.1:{port}/metrics"
        assert _fetch(base) == 401
        assert _fetch(base, Authorization=bad) == 401
        assert _fetch(base, Authorization=good) == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        ({"basic_auth": "scraper:pw-123"}, "(basic_auth=) must be a (username, password) pair"),
        ({"basic_auth": ("scraper", "")}, "(basic_auth=) must be a (username, password) pair"),
        ({"bearer_token": "short"}, "(bearer_token=) must be a string of at least 16"),
        ({"bearer_token": 12345678901234567}, "(bearer_token=) must be a string"),
        ({"addr": ""}, "(addr=) must be an address to listen on"),
    ],
    ids=["basic as a string", "empty password", "short token", "token not a string", "addr"],
)
def test_start_metrics_server_refuses_bad_arguments(options: dict[str, t.Any], fix: str) -> None:
    port = free_port()
    with pytest.raises((TypeError, ValueError), match=re.escape(f"start_metrics_server{fix}")):
        start_metrics_server(port, **options)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


# -- slow clients ------------------------------------------------------------------

WORKERS = 4


@contextlib.contextmanager
def _serving(
    collectors: t.Sequence[t.Any] = (), **attributes: t.Any
) -> t.Iterator[port_server.PortServer]:
    collectors = collectors or (CollectorRegistry(),)
    server = port_server.bind_server("127.0.0.1", 0, collectors, Settings())
    for name, value in {"workers": WORKERS, **attributes}.items():
        setattr(server, name, value)
    port_server.serve(server)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed_by_server(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading what it sends first)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _answer(sock: socket.socket) -> bytes:
    """All the server sends on ``sock`` until it closes it (within 10 s)."""
    sock.settimeout(10)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_idle_connections_hold_no_thread_and_a_scrape_still_answers() -> None:
    before = threading.active_count()
    with _serving(head_timeout=60.0) as server, contextlib.ExitStack() as stack:
        port = server.server_port
        idle = [stack.enter_context(_connect(port)) for _ in range(200)]
        slow = [stack.enter_context(_connect(port)) for _ in range(5)]
        for step in range(4):  # part of a request line, a byte at a time
            for sock in slow:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n"[step : step + 1])
            time.sleep(0.1)
        started = time.monotonic()
        # accepted after all of them: every one was accepted when it answers
        assert _fetch(f"http://127.0.0.1:{port}/metrics") == 200
        # a bound, not a speed: it did not wait for the others' head timeout
        assert time.monotonic() - started < 10
        assert threading.active_count() <= before + WORKERS + 2, threading.active_count()
        assert not _closed_by_server(idle[0], 0.2)  # still held, within its head timeout


@pytest.mark.parametrize("dribble", [False, True], ids=["silent", "dribbling"])
def test_a_connection_without_a_head_in_time_is_closed(dribble: bool) -> None:
    with _serving(head_timeout=1.0) as server, _connect(server.server_port) as sock:
        sent = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
        sock.settimeout(0.2)
        closed = False
        deadline = time.monotonic() + 10
        while not closed and time.monotonic() < deadline:
            if dribble:  # a byte every 0.2 s: the deadline is for the whole head
                with contextlib.suppress(OSError):
                    sock.send(sent[:1])
                sent = sent[1:] or b"X-Slow: 1\r\n"
            try:
                closed = sock.recv(4096) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
        assert closed, "the server still holds a connection that sent no complete head"
        assert _fetch(f"http://127.0.0.1:{server.server_port}/metrics") == 200


def test_beyond_max_reading_the_oldest_connection_is_closed() -> None:
    with _serving(head_timeout=60.0, max_reading=8) as server, contextlib.ExitStack() as stack:
        port = server.server_port
        idle = [stack.enter_context(_connect(port)) for _ in range(20)]
        assert _fetch(f"http://127.0.0.1:{port}/metrics") == 200  # all were accepted
        assert all(_closed_by_server(sock, 10) for sock in idle[:12])
        assert not any(_closed_by_server(sock, 0.1) for sock in idle[-6:])


def test_a_connection_dropped_while_it_sends_leaves_the_server_serving() -> None:
    """Each new connection drops the previous one, which has just sent a byte."""
    with _serving(head_timeout=60.0, max_reading=1) as server, contextlib.ExitStack() as stack:
        port = server.server_port
        previous = stack.enter_context(_connect(port))
        for _ in range(300):
            with contextlib.suppress(OSError):
                previous.send(b"G")
            previous = stack.enter_context(_connect(port))
        assert _fetch(f"http://127.0.0.1:{port}/metrics") == 200


_LOW_LIMIT = """
import resource, sys, time
from prometheus_client import CollectorRegistry
from flask_signal_metrics import port_server
from flask_signal_metrics.config import Settings

server = port_server.bind_server("127.0.0.1", 0, (CollectorRegistry(),), Settings())
server.head_timeout = 60.0
port_server.serve(server)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(server.server_port, flush=True)
time.sleep(60)
"""


def test_out_of_descriptors_idle_connections_make_way_for_a_scrape(tmp_path: Path) -> None:
    """A process with no descriptor left frees an idle connection's, rather than spin."""
    script = tmp_path / "low_limit.py"
    script.write_text(_LOW_LIMIT)
    args = [sys.executable, str(script)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(args, stdout=subprocess.PIPE, cwd=ROOT, env=env) as process:
        try:
            assert process.stdout is not None
            port = int(process.stdout.readline())
            with contextlib.ExitStack() as stack:
                for _ in range(80):  # more than the server process may open
                    stack.enter_context(_connect(port))
                assert _fetch(f"http://127.0.0.1:{port}/metrics") == 200
        finally:
            process.kill()
            process.wait(15)


class _Blocking:
    """A collector whose scrape waits until it is let go (at most 10 s)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()

    def collect(self) -> t.Iterator[t.Any]:
        self.entered.set()
        self.go.wait(10)
        return iter(())


def test_requests_beyond_the_pool_and_its_queue_are_told_to_retry() -> None:
    blocking = _Blocking()
    with _serving([blocking], workers=1, max_waiting=1) as server:
        port = server.server_port
        request = b"GET /metrics HTTP/1.0\r\n\r\n"
        with _connect(port) as answered, _connect(port) as queued, _connect(port) as refused:
            answered.sendall(request)
            assert blocking.entered.wait(10)  # the one handler thread is busy
            queued.sendall(request)
            deadline = time.monotonic() + 10
            while server._waiting.qsize() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)  # until the server queues it
            refused.sendall(request)
            said = _answer(refused)
            assert said.startswith(b"HTTP/1.0 503 "), said[:100]
            assert b"\r\nRetry-After: 1\r\n" in said
            blocking.go.set()
            assert _answer(answered).startswith(b"HTTP/1.0 200 ")
            assert _answer(queued).startswith(b"HTTP/1.0 200 ")


class _Big:
    """A collector with an answer far larger than the sockets' buffers, cheap to render."""

    def collect(self) -> t.Iterator[t.Any]:
        yield GaugeMetricFamily("big", "x" * 16_000_000, value=1)


def test_a_client_that_never_reads_frees_its_thread() -> None:
    """The answer's write is bounded too: a scraper that stops reading lets go."""
    with _serving([_Big()], workers=1, write_timeout=1.0) as server:
        port = server.server_port
        with socket.socket() as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
            stuck.settimeout(10)
            stuck.connect(("127.0.0.1", port))
            stuck.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # and never reads the answer
            time.sleep(0.5)
            assert _fetch(f"http://127.0.0.1:{port}/metrics") == 200


@pytest.mark.parametrize(
    "head",
    [b"GET / HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n", b"\xff" * 40_000],
    ids=["long headers", "garbage"],
)
def test_an_oversized_head_is_refused(head: bytes) -> None:
    with _serving() as server, _connect(server.server_port) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(head)
        said = _answer(sock)  # closed: did not wait for more
        assert said == b"" or said.startswith(b"HTTP/1.0 431 "), said[:100]
        assert _fetch(f"http://127.0.0.1:{server.server_port}/metrics") == 200


def test_the_listen_backlog_is_larger_than_socketservers() -> None:
    with _serving() as server:
        assert server.request_queue_size >= 64


def test_closing_the_server_lets_go_of_its_connections() -> None:
    before = threading.active_count()
    with contextlib.ExitStack() as stack:
        with _serving(head_timeout=60.0) as server:
            idle = [stack.enter_context(_connect(server.server_port)) for _ in range(5)]
            assert _fetch(f"http://127.0.0.1:{server.server_port}/metrics") == 200
        assert all(_closed_by_server(sock, 10) for sock in idle)
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_a_forked_child_lets_go_of_the_servers_connections() -> None:
    """gunicorn's workers are forked from the master that serves the port."""
    with _serving(head_timeout=60.0) as server, _connect(server.server_port) as idle:
        assert _fetch(f"http://127.0.0.1:{server.server_port}/metrics") == 200
        held = list(server._held)  # the idle connection's other end
        assert held
        pid = os.fork()
        if pid == 0:
            os._exit(0 if all(sock.fileno() == -1 for sock in [server.socket, *held]) else 2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not _closed_by_server(idle, 0.2)  # the parent still holds it
        assert _fetch(f"http://127.0.0.1:{server.server_port}/metrics") == 200
