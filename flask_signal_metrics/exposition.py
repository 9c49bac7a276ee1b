"""Serving metrics over HTTP: the ``/metrics`` view and what every answer goes through.

Content negotiation, compression and authentication, on Werkzeug's request
and response objects; the encoding itself is :func:`.metrics.render.render`. Both
ways of serving (this view and :mod:`.port_server`) go through :func:`respond`,
so they answer alike, and concurrent scrapes of the same metrics share one
render (:mod:`.flight`).
"""

from __future__ import annotations

import collections.abc as cabc
import gzip
import hmac
import logging
import typing as t

from flask import current_app
from flask import request
from werkzeug.wrappers import Request
from werkzeug.wrappers import Response

from .flight import FlightTimeout
from .flight import SingleFlight
from .metrics.render import render as render_metrics
from .multiprocess.directory import count_refused
from .multiprocess.directory import LockUnavailable
from .state import exclude
from .state import get_state

if t.TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from .config import Settings

#: Bodies shorter than this are sent as they are: gzip would not pay.
_GZIP_MIN_BYTES = 1024

#: Seconds a refused scrape is told to wait: a compaction holds the lock for milliseconds.
_RETRY_AFTER = "1"

#: The most seconds a scrape waits for the same render another scrape started.
SHARED_RENDER_WAIT = 10.0

logger = logging.getLogger("flask_signal_metrics")


class _Rendered(t.NamedTuple):
    """A scrape's body as sent, and how it is encoded."""

    body: bytes
    content_type: str
    gzipped: bool


#: A render's inputs: the collectors, the accepted media ranges, the
#: ``name[]`` filter, and whether the body is gzipped.
_RenderKey = tuple[tuple["Collector", ...], tuple[str, ...], frozenset[str], bool]

#: The renders in progress, shared by the scrapes that want the same one.
_RENDERS: SingleFlight[_RenderKey, _Rendered] = SingleFlight()


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
    wants_gzip = req.accept_encodings["gzip"] > 0
    key = (tuple(collectors), tuple(accepted), frozenset(names), wants_gzip)

    def render() -> _Rendered:
        body, content_type = render_metrics(collectors, accepted, names, settings.lock_timeout)
        if wants_gzip and len(body) >= _GZIP_MIN_BYTES:
            return _Rendered(gzip.compress(body, compresslevel=6), content_type, True)
        return _Rendered(body, content_type, False)

    try:
        rendered = _RENDERS.run(key, render, SHARED_RENDER_WAIT)
    except FlightTimeout:
        # A render that long is stuck (a collector that hangs): more
        # waiters would only hold more threads.
        return _unavailable("Metrics busy: try again shortly.")
    except LockUnavailable as e:  # every scrape that joined the render gets it
        # A gap in the series (the scrape failed) rather than old numbers served as new.
        count_refused(e.reason)
        logger.warning("flask-signal-metrics: scrape refused (503): %s.", e)
        return _unavailable("Service Unavailable: the metrics' lock is held elsewhere; try again.")
    response = Response(rendered.body, content_type=rendered.content_type)
    response.vary.add("Accept")
    response.vary.add("Accept-Encoding")
    response.cache_control.no_store = True
    if rendered.gzipped:
        response.content_encoding = "gzip"
    return response


def _unavailable(message: str) -> Response:
    """A 503 a scraper retries after ``Retry-After``, never cached."""
    response = Response(message + "\n", status=503, mimetype="text/plain")
    response.headers["Retry-After"] = _RETRY_AFTER
    response.cache_control.no_store = True
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
