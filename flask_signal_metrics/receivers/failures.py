"""A receiver's failure: counted, logged once per cause, never raised."""

from __future__ import annotations

import typing as t

from ..state import EXTENSION_KEY
from ..state import logger

if t.TYPE_CHECKING:
    from flask import Flask

    from ..state import State

#: Causes already logged are only counted; past this many, nothing more is kept.
MAX_LOGGED_CAUSES = 1000


def failed(app: Flask, signal: str, error: Exception) -> None:
    """Count a receiver's failure and log it the first time its cause is seen."""
    try:
        state: State | None = app.extensions.get(EXTENSION_KEY)
        if state is None or state.metrics is None:
            return
        state.metrics.receiver_errors.child((signal,)).inc()
        frame, line = "?", 0
        tb = error.__traceback__
        while tb is not None:
            frame, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
            tb = tb.tb_next
        cause = (signal, type(error).__qualname__, frame, line)
        seen = state.logged_failures
        if cause not in seen and len(seen) < MAX_LOGGED_CAUSES:
            seen.add(cause)
            logger.error(
                "flask-signal-metrics: the %s receiver failed; the request is"
                " unaffected. Further failures with this cause are only counted"
                " in flask_signal_metrics_receiver_errors_total.",
                signal,
                exc_info=error,
            )
    except Exception:
        pass  # nothing may escape into the request, not even from here


def call_hook(app: Flask, signal: str, hook: t.Callable[..., object], *args: object) -> None:
    """Call one of the user's hooks; what it raises is counted as ``signal``'s failure."""
    try:
        hook(*args)
    except Exception as e:
        failed(app, signal, e)
