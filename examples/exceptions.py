"""Exception monitoring through ``got_request_exception``, from the tutorials.

The tutorial connects an ``exception_reporter`` to Flask's
``got_request_exception`` to log runtime errors. The extension already
listens to that signal and counts unhandled exceptions by route and class;
the reporter stays, connected for this app only::

    flask_request_exceptions_total{error_type="ZeroDivisionError",
        http_request_method="GET",http_route="/compute/<int:n>"} 1.0
    http_server_request_duration_seconds_count{error_type="ZeroDivisionError",
        ...,http_response_status_code="500",...} 1.0

    flask --app examples.exceptions run
"""

from __future__ import annotations

import logging

from flask import Flask
from flask import got_request_exception

from flask_signal_metrics import SignalMetrics

app = Flask(__name__)
signal_metrics = SignalMetrics(app)
log = logging.getLogger(__name__)
reported: list[str] = []


@got_request_exception.connect_via(app)
def exception_reporter(sender: Flask, exception: BaseException, **extra: object) -> None:
    reported.append(type(exception).__name__)
    log.error("runtime error: %r", exception)


@app.get("/compute/<int:n>")
def compute(n: int) -> str:
    return f"{100 // n}"
