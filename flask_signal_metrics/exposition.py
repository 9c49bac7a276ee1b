"""Serving metrics over HTTP: the ``/metrics`` view and the separate-port server.

Content negotiation, compression and authentication, on Werkzeug's request
and response objects; the encoding itself is :func:`prometheus.render`. Both
ways of serving go through :func:`respond`, so they answer alike.
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import gzip
import hmac
import logging
import os
import socketserver
import threading
import typing as t
import weakref
from wsgiref.simple_server import make_server
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.simple_server import WSGIServer

from flask import current_app
from flask import request
from werkzeug.wrappers import Request
from werkzeug.wrappers import Response

from . import prometheus
from .state import exclude
from .state import get_state

if t.TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from .config import Settings

#: Bodies shorter than this are sent as they are: gzip would not pay.
_GZIP_MIN_BYTES = 1024

logger = logging.getLogger("flask_signal_metrics")


@exclude
def metrics_view() -> Response:
    """The app's ``/metrics`` route."""
    state = get_state(current_app)
    return respond(request, state.collectors, state.settings)


def respond(req: Request, collectors: cabc.Sequence[Collector], settings: Settings) -> Response:
    """Serve ``collectors`` in the format the scraper prefers.

    The ``Accept`` header is ranked by its q-values (q=0 means "not this"),
    which ``choose_encoder`` alone ignores; a header that cannot be parsed
    gets the Prometheus text format, never an error. ``?name[]=...`` limits
    the answer to those metric families, as prometheus_client's own exporter
    does.
    """
    denied = _check_credentials(req, settings.basic_auth, settings.bearer_token)
    if denied is not None:
        return denied
    ranked = sorted(req.accept_mimetypes, key=lambda item: -item[1])
    accepted = [media_range for media_range, quality in ranked if quality > 0]
    names = req.args.getlist("name[]")
    body, content_type = prometheus.render(collectors, accepted, names)
    response = Response(body, content_type=content_type)
    response.vary.add("Accept")
    response.vary.add("Accept-Encoding")
    response.cache_control.no_store = True
    if len(body) >= _GZIP_MIN_BYTES and req.accept_encodings["gzip"] > 0:
        response.set_data(gzip.compress(body, compresslevel=6))
        response.content_encoding = "gzip"
    return response


def _check_credentials(
    req: Request, basic: tuple[str, str] | None, token: str | None
) -> Response | None:
    """None when the request may read the metrics, else the 401 to send.

    Credentials are compared with ``hmac.compare_digest``, in constant time.
    """
    if basic is None and token is None:
        return None
    given = req.authorization
    if given is not None:
        if basic is not None and given.type == "basic":
            user_ok = _same(given.username or "", basic[0])
            password_ok = _same(given.password or "", basic[1])
            if user_ok & password_ok:
                return None
        if token is not None and given.type == "bearer" and _same(given.token or "", token):
            return None
    challenges = []
    if basic is not None:
        challenges.append('Basic realm="metrics", charset="UTF-8"')
    if token is not None:
        challenges.append('Bearer realm="metrics"')
    response = Response("Unauthorized\n", status=401, mimetype="text/plain")
    response.headers["WWW-Authenticate"] = ", ".join(challenges)
    return response


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


# -- the separate-port server ------------------------------------------------------


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process up


class _QuietHandler(WSGIRequestHandler):
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
) -> WSGIServer:
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
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
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


def serve(server: WSGIServer) -> WSGIServer:
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
_LISTENING: weakref.WeakKeyDictionary[WSGIServer, tuple[int, bool]] = weakref.WeakKeyDictionary()


def _after_fork_in_child() -> None:
    """A forked child holds a copy of its parent's listening socket, not its thread.

    The parent goes on answering on the port with its own numbers; the child
    lets go of the socket (so that the port is free once the parent is gone).
    A per-app server (SIGNAL_METRICS_PORT) forked away from the requests
    it should count (gunicorn's ``preload_app``) is said, once per child.
    """
    for server, (pid, for_workers) in list(_LISTENING.items()):
        del _LISTENING[server]
        with contextlib.suppress(OSError):
            server.socket.close()
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
