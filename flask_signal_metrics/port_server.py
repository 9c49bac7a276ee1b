"""The separate-port server: SIGNAL_METRICS_PORT's and start_metrics_server's.

Heads are read by one selector thread with a deadline; a fixed pool of
handler threads answers, each through :func:`.exposition.respond`, so a slow
or hostile client holds no thread and the number of threads is bounded.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import errno
import io
import logging
import os
import queue
import selectors
import socket
import threading
import time
import typing as t
import weakref
from wsgiref.simple_server import make_server
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.simple_server import WSGIServer

from werkzeug.wrappers import Request
from werkzeug.wrappers import Response

from . import config
from .exposition import respond
from .metrics.registry import default_registry
from .multiprocess.directory import check_directory
from .multiprocess.directory import multiprocess
from .multiprocess.directory import process_died
from .state import get_state

if t.TYPE_CHECKING:
    from flask import Flask
    from prometheus_client.registry import Collector

    from .config import Settings

logger = logging.getLogger("flask_signal_metrics")


#: Seconds a client has, from its connection, to send its request line and headers.
HEAD_TIMEOUT = 10.0
#: Seconds an answer may take to be sent; Prometheus's own scrape timeout is shorter.
WRITE_TIMEOUT = 30.0
#: Handler threads per server: the scrapes it answers at once.
WORKERS = 4
#: Connections the kernel queues before the server accepts them (socketserver's is 5).
BACKLOG = 128
#: Connections whose request head is still arriving; beyond it the oldest is closed.
MAX_READING = 256
#: Requests read and waiting for a handler thread; beyond it the answer is 503.
MAX_WAITING = 64
#: The longest request head (request line and headers) accepted, in bytes.
MAX_HEAD = 32 * 1024

_TOO_LARGE = b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n"
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"


class _Reading:
    """A connection whose request head is arriving."""

    __slots__ = ("address", "deadline", "head")

    def __init__(self, address: t.Any, deadline: float) -> None:
        self.address = address
        self.deadline = deadline
        self.head = bytearray()


class _Arrived(t.NamedTuple):
    """A connection whose request head has arrived, for a handler thread."""

    sock: socket.socket
    head: bytes
    address: t.Any


class PortServer(WSGIServer):
    """The metrics port: request heads are read in the accepting thread, answers in a pool.

    A connection holds no thread while its head arrives: one thread accepts
    and reads every head (closing those that take longer than
    :attr:`head_timeout`), then hands complete requests to :attr:`workers`
    handler threads. Idle or slow clients therefore hold a socket each (at
    most :data:`MAX_READING`), never a thread, and do not delay a scrape that
    sends its request at once.
    """

    request_queue_size = BACKLOG
    head_timeout = HEAD_TIMEOUT
    write_timeout = WRITE_TIMEOUT
    workers = WORKERS
    max_reading = MAX_READING
    max_waiting = MAX_WAITING

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        self._reading: dict[socket.socket, _Reading] = {}  # oldest first
        #: Filled by the accepting thread only, which keeps it to MAX_WAITING.
        self._waiting: queue.SimpleQueue[_Arrived | None] = queue.SimpleQueue()
        #: Every connection accepted and not yet closed, to let go of after a fork.
        self._held: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._selector: selectors.BaseSelector | None = None
        self._wake, self._waker = socket.socketpair()
        super().__init__(*args, **kwargs)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections and read their heads until :meth:`shutdown`.

        The handler threads start and end with it: those answering when it
        stops finish their answer, and what waits for them is closed.
        """
        self._stopped.clear()
        self.socket.setblocking(False)
        self._wake.setblocking(False)
        try:
            with selectors.DefaultSelector() as selector:
                self._selector = selector
                self._start_workers()
                selector.register(self.socket, selectors.EVENT_READ)
                selector.register(self._wake, selectors.EVENT_READ)
                while not self._stopping:
                    for key, _ in selector.select(self._expire(selector)):
                        self._ready(selector, t.cast("socket.socket", key.fileobj))
                for sock in list(self._reading):
                    self._drop(selector, sock)
        finally:
            self._selector = None
            self._stop_workers()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait for it (at once if it is not running)."""
        self._stopping = True
        self._wakeup()
        self._stopped.wait()

    def server_close(self) -> None:
        """Close the port (stopping :meth:`serve_forever` first); wait a little for the handlers."""
        self._stopping = True
        self._wakeup()
        self._stopped.wait(5)  # the loop never blocks: it ends at once
        super().server_close()
        deadline = time.monotonic() + 5  # one still writing ends at its write timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._wake.close()
        self._waker.close()

    def shutdown_request(self, request: t.Any) -> None:
        self._held.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        # A client that went away or timed out; an error of the app is logged by wsgiref.
        logger.debug("flask-signal-metrics: metrics port request failed", exc_info=True)

    def forget(self) -> None:
        """In a forked child: let go of the port and every connection, leaving them to the parent.

        Only descriptors are closed (no shutdown, which would end the
        parent's connections); no lock is taken, as another thread may have
        held it at the fork.
        """
        for sock in [self.socket, self._wake, self._waker, *self._held]:
            with contextlib.suppress(OSError):
                os.close(sock.detach())
        if self._selector is not None:
            with contextlib.suppress(OSError):
                self._selector.close()
        self._held.clear()
        self._reading.clear()

    def _wakeup(self) -> None:
        with contextlib.suppress(OSError):
            self._waker.send(b"x")

    def _start_workers(self) -> None:
        # Not a ThreadPoolExecutor: its threads are joined at interpreter exit,
        # so a client that stopped reading would hold the process up.
        self._threads = [
            threading.Thread(
                target=self._work, name=f"flask-signal-metrics:{self.server_port}:{n}", daemon=True
            )
            for n in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def _stop_workers(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:  # not answered yet: closed unanswered
                arrived = self._waiting.get_nowait()
                if arrived is not None:
                    self.shutdown_request(arrived.sock)
        for _ in self._threads:
            self._waiting.put(None)

    def _ready(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        try:
            if sock is self.socket:
                self._accept(selector)
            elif sock is self._wake:
                with contextlib.suppress(OSError):
                    self._wake.recv(64)
            else:
                self._read(selector, sock)
        except Exception:  # one connection's trouble never stops the port
            logger.warning("flask-signal-metrics: metrics port connection failed", exc_info=True)
            if sock in self._reading:
                self._drop(selector, sock)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            sock, address = self.get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self._out_of_descriptors(selector)
            return  # else gone before it was accepted
        self._held.add(sock)
        if len(self._reading) >= self.max_reading:
            # The oldest is the likeliest to be slow on purpose: a scraper sends its head at once.
            self._drop(selector, next(iter(self._reading)))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        self._reading[sock] = _Reading(address, time.monotonic() + self.head_timeout)

    def _out_of_descriptors(self, selector: selectors.BaseSelector) -> None:
        """The process has no descriptor left: free one, rather than spin on the port."""
        if self._reading:
            self._drop(selector, next(iter(self._reading)))  # the oldest, as beyond max_reading
        else:
            time.sleep(0.05)  # none of ours to free: the others wait in the backlog

    def _read(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        reading = self._reading.get(sock)
        if reading is None:  # dropped earlier in this round of events
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(selector, sock)
            return
        head = reading.head
        searched = max(0, len(head) - 3)
        head += data
        end = _end_of_head(head, searched)
        if (end < 0 and len(head) > MAX_HEAD) or end > MAX_HEAD:
            self._drop(selector, sock, _TOO_LARGE)
        elif end >= 0:
            selector.unregister(sock)
            del self._reading[sock]
            self._hand_over(_Arrived(sock, bytes(head), reading.address))

    def _hand_over(self, arrived: _Arrived) -> None:
        if self._waiting.qsize() >= self.max_waiting:
            _say(arrived.sock, _BUSY)
            self.shutdown_request(arrived.sock)
        else:
            self._waiting.put(arrived)

    def _expire(self, selector: selectors.BaseSelector) -> float | None:
        """Close the connections past their head deadline; the seconds to the next one."""
        now = time.monotonic()
        while self._reading:
            sock, reading = next(iter(self._reading.items()))  # the oldest, due soonest
            if reading.deadline > now:
                return reading.deadline - now
            self._drop(selector, sock)
        return None

    def _drop(
        self, selector: selectors.BaseSelector, sock: socket.socket, say: bytes = b""
    ) -> None:
        selector.unregister(sock)
        del self._reading[sock]
        if say:
            _say(sock, say)
        self.shutdown_request(sock)

    def _work(self) -> None:
        while True:
            arrived = self._waiting.get()
            if arrived is None:
                return
            sock = arrived.sock
            try:
                sock.settimeout(self.write_timeout)
                # _PortHandler takes the record, with the head already read
                self.finish_request(arrived, arrived.address)  # type: ignore[arg-type]
            except Exception:
                self.handle_error(sock, arrived.address)
            finally:
                self.shutdown_request(sock)


def _end_of_head(head: bytearray, start: int) -> int:
    """The length of the request head, or -1 while its blank line has not come.

    Lines may end in a bare LF, as http.server reads them.
    """
    crlf, lf = head.find(b"\n\r\n", start), head.find(b"\n\n", start)
    ends = [end + size for end, size in ((crlf, 3), (lf, 2)) if end >= 0]
    return min(ends, default=-1)


def _say(sock: socket.socket, message: bytes) -> None:
    """A short answer to a connection the server closes, if its buffer takes it now."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(message)


class _Replay(io.RawIOBase):
    """A connection's input: the head the server already read, then the rest from the socket."""

    def __init__(self, head: bytes, sock: socket.socket) -> None:
        self._head = memoryview(head)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: t.Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._sock.recv_into(buffer)


class _PortHandler(WSGIRequestHandler):
    request: t.Any

    def setup(self) -> None:
        arrived: _Arrived = self.request
        self.request = arrived.sock
        super().setup()
        self.rfile.close()  # its reads would miss the head
        self.rfile = io.BufferedReader(_Replay(arrived.head, arrived.sock))

    def log_message(self, format: str, *args: t.Any) -> None:
        pass  # one line per scrape on stderr helps nobody


def metrics_app(
    collectors: cabc.Sequence[Collector], settings: Settings
) -> t.Callable[..., t.Iterable[bytes]]:
    """A WSGI app serving the metrics on any path, as ``/metrics`` does."""

    def app(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Any:
        req = Request(environ)
        if req.method not in ("GET", "HEAD"):
            response = Response("Method Not Allowed\n", status=405, headers={"Allow": "GET, HEAD"})
        else:
            response = respond(req, collectors, settings)
        return response(environ, start_response)

    return app


def bind_server(
    addr: str,
    port: int,
    collectors: cabc.Sequence[Collector],
    settings: Settings,
    *,
    key: str = "SIGNAL_METRICS_PORT",
    for_workers: bool = False,
) -> PortServer:
    """Listen on ``addr:port`` (nothing is served until :func:`serve`).

    Separate from serving so that a port in use fails before the app changes.

    :param for_workers: the server is meant to outlive forks (a gunicorn
        master's, for its workers); otherwise a forked child is told that
        the port serves its parent's numbers.
    :raises OSError: the port cannot be had; the message names ``key`` and the fixes.
    """
    try:
        server = make_server(
            addr,
            port,
            metrics_app(collectors, settings),
            server_class=PortServer,
            handler_class=_PortHandler,
        )
    except OSError as e:
        raise OSError(
            e.errno,
            f"{key}: cannot listen on {addr}:{port} ({e.strerror or e}). Another"
            " process holds it: another process of this app (several worker processes"
            " share one server: set PROMETHEUS_MULTIPROC_DIR and call"
            " start_metrics_server(port) in gunicorn's when_ready hook, see"
            " examples/gunicorn.conf.py), or another program. Choose a free port.",
        ) from e
    _LISTENING[server] = (os.getpid(), for_workers)
    return server


def serve(server: PortServer) -> PortServer:
    """Serve the metrics from a daemon thread; returns the server."""
    thread = threading.Thread(
        target=server.serve_forever,
        name=f"flask-signal-metrics:{server.server_port}",
        daemon=True,
    )
    thread.start()
    host, port = server.server_address[:2]
    logger.info("flask-signal-metrics: serving metrics on http://%s:%d/", host, port)
    return server


#: Servers listening in this process (or inherited by a fork): the pid that
#: opened each, and whether it serves a process group.
_LISTENING: weakref.WeakKeyDictionary[PortServer, tuple[int, bool]] = weakref.WeakKeyDictionary()


def _after_fork_in_child() -> None:
    """A forked child holds a copy of its parent's listening socket, not its thread.

    The parent goes on answering on the port with its own numbers; the child
    lets go of the socket (so that the port is free once the parent is gone).
    A per-app server (SIGNAL_METRICS_PORT) forked away from the requests
    it should count (gunicorn's ``preload_app``) is said, once per child.
    """
    for server, (pid, for_workers) in list(_LISTENING.items()):
        del _LISTENING[server]
        server.forget()
        if not for_workers:
            logger.warning(
                "flask-signal-metrics: SIGNAL_METRICS_PORT (port %d) was opened by"
                " process %d, which then forked this one: the port serves process"
                " %d's metrics only. If this process serves requests (gunicorn's"
                " preload_app), they are not on that port: for worker processes set"
                " PROMETHEUS_MULTIPROC_DIR and call start_metrics_server(port) in"
                " gunicorn's when_ready hook instead (examples/gunicorn.conf.py).",
                server.server_port,
                pid,
                pid,
            )


os.register_at_fork(after_in_child=_after_fork_in_child)


def start_metrics_server(
    port: int,
    addr: str = "127.0.0.1",
    *,
    basic_auth: tuple[str, str] | None = None,
    bearer_token: str | None = None,
    lock_timeout: float = config.LOCK_TIMEOUT,
    app: Flask | None = None,
) -> PortServer:
    """Serve metrics on ``addr:port`` from this process, for a whole process group.

    For gunicorn with several workers: call it in the ``when_ready`` hook, in
    the master. In multiprocess mode every scrape sums the files of every
    worker, so the master needs no app. (With one process, set
    ``SIGNAL_METRICS_PORT`` instead.)

    .. code-block:: python

        def when_ready(server):
            from flask_signal_metrics import start_metrics_server
            start_metrics_server(9100, bearer_token=os.environ["METRICS_BEARER_TOKEN"])

    :param basic_auth: a ``(username, password)`` pair a scrape must give
        (as ``SIGNAL_METRICS_BASIC_AUTH``); read it from the environment.
    :param bearer_token: a token a scrape must give (as
        ``SIGNAL_METRICS_BEARER_TOKEN``). Without either, anyone who can
        connect to ``addr:port`` reads the metrics.
    :param lock_timeout: how long a scrape waits for the multiprocess
        directory's lock before answering 503 (as ``SIGNAL_METRICS_LOCK_TIMEOUT``).
    :param app: serve what this app's ``/metrics`` serves (one process, no
        ``SIGNAL_METRICS_PORT``); by default the process's registry, as for workers.
    :returns: the server, serving from daemon threads (``shutdown()`` then
        ``server_close()`` stops it); the docs' security page gives its bounds
        on slow clients.
    :raises TypeError, ValueError: a bad argument, or a multiprocess directory
        another user can write (see :func:`check_directory`), before
        anything listens.
    """
    arguments = {
        "port": port,
        "addr": addr,
        "basic_auth": basic_auth,
        "bearer_token": bearer_token,
        "lock_timeout": lock_timeout,
    }
    settings = config.load_arguments("start_metrics_server", arguments)
    if multiprocess():
        check_directory()
    collectors: tuple[t.Any, ...] = (default_registry(),)
    if app is not None:
        collectors = get_state(app).collectors
    server = bind_server(
        settings.addr, port, collectors, settings, key="start_metrics_server", for_workers=True
    )
    return serve(server)


def worker_exited(pid: int) -> None:
    """For a server's worker-exit hook (gunicorn's ``child_exit``), in multiprocess mode.

    Marks the worker dead, so that its in-flight gauge stops counting, and
    folds its files into the directory's compacted ones, so that scrapes stay
    as fast after a thousand worker restarts as before the first. Never
    waits for the directory's lock more than a moment and never raises (the
    master replaces the worker only once it returns): while the lock is held
    elsewhere, the files are folded at a later call.
    """
    process_died(pid)
