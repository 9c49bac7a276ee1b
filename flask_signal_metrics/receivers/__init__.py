"""The receivers of Flask's signals: the only module that connects to signals.

Rules every receiver here keeps (see Flask's and blinker's sources):

- It is a module-level function, connected with ``sender=app``: blinker holds
  receivers weakly by default, so a closure made in ``init_app`` would vanish.
  One set of functions serves every app; per-app state is found through the
  sender, ``app.extensions["signal_metrics"]``.
- It never raises. An exception in a receiver turns a 200 into a 500, or
  escapes ``wsgi_app``, and skips the other receivers of that signal; so each
  body is wrapped, the failure is logged once per cause and counted in
  ``flask_signal_metrics_receiver_errors_total{signal}``.
- A request is recorded exactly once, in ``request_tearing_down``: it is the
  only end-of-request signal Flask always sends (``request_finished`` is not
  sent when ``PROPAGATE_EXCEPTIONS`` re-raises), ``request_finished`` can be
  sent twice (when one of its receivers raises), and with
  ``stream_with_context`` Flask 3.1 sends ``request_tearing_down`` twice.

Modules: :mod:`.requests` (the request signals), :mod:`.streams` (bodies
of unknown length), :mod:`.recording` (a finished request's metrics and
span), :mod:`.templates` (renders and flashes), :mod:`.failures`,
:mod:`.environ` (what a request's environ holds).
"""

from __future__ import annotations

import typing as t

from flask import signals

from .requests import on_got_request_exception
from .requests import on_request_finished
from .requests import on_request_started
from .requests import on_request_tearing_down
from .templates import on_before_render_template
from .templates import on_message_flashed
from .templates import on_template_rendered

if t.TYPE_CHECKING:
    from flask import Flask

RECEIVERS: tuple[tuple[t.Any, t.Callable[..., None]], ...] = (
    (signals.request_started, on_request_started),
    (signals.request_finished, on_request_finished),
    (signals.got_request_exception, on_got_request_exception),
    (signals.request_tearing_down, on_request_tearing_down),
    (signals.before_render_template, on_before_render_template),
    (signals.template_rendered, on_template_rendered),
    (signals.message_flashed, on_message_flashed),
)

#: The blinker names of the signals listened to, e.g. ``request-started``.
SIGNAL_NAMES: tuple[str, ...] = tuple(signal.name for signal, _ in RECEIVERS)


def connect(app: Flask) -> None:
    """Connect every receiver for ``app`` only (``sender=app``)."""
    for signal, receiver in RECEIVERS:
        signal.connect(receiver, sender=app, weak=False)


def disconnect(app: Flask) -> None:
    """Disconnect every receiver :func:`connect` connected for ``app``."""
    for signal, receiver in RECEIVERS:
        signal.disconnect(receiver, sender=app)


def connect_declared(signal: t.Any, receiver: t.Callable[..., None], sender: t.Any) -> None:
    """Connect a declaration (or the user's receiver it decorates) to the app's signal.

    Held strongly (``weak=False``): a declaration may be the only reference to
    its receiver. Unlike Flask's signals, the app's have any sender: ``sender``
    is blinker's ``ANY`` unless the user names one.
    """
    signal.connect(receiver, sender=sender, weak=False)
