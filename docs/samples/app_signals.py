"""The app's own signals turned into metrics: counts, and the time between two signals."""

from __future__ import annotations

import logging
import typing as t

from blinker import Namespace
from flask import Flask

from flask_signal_metrics import SignalMetrics

log = logging.getLogger(__name__)
app = Flask(__name__)

signals = Namespace()
user_registered = signals.signal("user-registered")
model_saved = signals.signal("model-saved")
job_started, job_finished = signals.signal("job-started"), signals.signal("job-finished")

signal_metrics = SignalMetrics(app)

# count the sends, with a bounded label taken from the send's keyword arguments
signal_metrics.count(
    user_registered,
    labels={"plan": lambda sender, **kw: kw["plan"]},
    allowed={"plan": {"free", "pro"}},
)


# or as a decorator that also connects your receiver (held strongly)
@signal_metrics.count(model_saved, labels={"model": lambda sender, **kw: type(sender).__name__})
def on_model_saved(sender: object, **extra: t.Any) -> None:
    log.info("saved %r", sender)


# time the span between two signals, matched by a key you name
signal_metrics.time(job_started, job_finished, key=lambda sender, **kw: kw["job_id"])
