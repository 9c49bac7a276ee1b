"""Streamed responses of unknown length: recorded when the server closes the body."""

from __future__ import annotations

import functools
import typing as t

from flask import signals

from ..state import EXTENSION_KEY
from ..state import START_KEY
from .environ import DONE
from .environ import READY_KEY
from .environ import Start
from .environ import STREAM_CONTEXT
from .environ import STREAMING
from .failures import failed
from .recording import record
from .recording import release_context

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Response

    from ..metrics.catalogue import Metrics


class _Stream(t.NamedTuple):
    """A streamed request waiting for the server to close its body."""

    app: Flask
    environ: dict[str, t.Any]
    start: Start
    response: Response
    exc: BaseException | None


def defer_to_close(
    app: Flask,
    environ: dict[str, t.Any],
    start: Start,
    response: Response,
    exc: BaseException | None,
) -> None:
    """A stream of unknown length: the server produces the body after teardown.

    The request ends when the server closes the body, and stays in flight
    until then; the time to the response object is recorded now.
    """
    environ[START_KEY] = STREAMING
    environ[STREAM_CONTEXT] = id(start.ctx)
    if start.traced is not None:
        release_context(start.traced)
    stream = _Stream(app, environ, start, response, exc)
    response.call_on_close(functools.partial(_close_stream, stream))
    metrics: Metrics = app.extensions[EXTENSION_KEY].metrics
    route = start.route
    ready = metrics.stream_ready.child((route.method, route.route, str(response.status_code)))
    began = start.began
    ready.observe(environ.get(READY_KEY, began) - began)


def _close_stream(stream: _Stream) -> None:
    """Record a streamed request when the server closes its body (once: it may close twice)."""
    try:
        environ = stream.environ
        if environ.get(START_KEY) is not STREAMING:
            return
        environ[START_KEY] = DONE
        # Released at the teardown (defer_to_close).
        status = stream.response.status_code
        record(
            stream.app,
            environ,
            stream.start,
            stream.response,
            status,
            None,
            stream.exc,
            released=True,
        )
    except Exception as e:
        failed(stream.app, signals.request_tearing_down.name, e)
