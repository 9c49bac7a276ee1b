"""The tutorials' ``model-saved`` signal, counted by model.

The tutorial declares a signal in a blinker ``Namespace`` and connects a
receiver that prints "Model saved!". Here one line does both, and each save is
counted by model::

    flask_signal_model_saved_total{model="Order"} 1.0

    flask --app examples.model_saved run
"""

from __future__ import annotations

import logging

from blinker import Namespace
from flask import Flask

from flask_signal_metrics import SignalMetrics

my_signals = Namespace()
model_saved = my_signals.signal("model-saved")

app = Flask(__name__)
signal_metrics = SignalMetrics(app)
log = logging.getLogger(__name__)


class Order:
    def __init__(self, item: str) -> None:
        self.item = item

    def save(self) -> None:
        model_saved.send(self)


@signal_metrics.count(model_saved, labels={"model": lambda sender, **kw: type(sender).__name__})
def on_model_saved(sender: object, **extra: object) -> None:
    log.info("Model saved! %r", sender)


@app.post("/orders/<item>")
def create_order(item: str) -> tuple[str, int]:
    Order(item).save()
    return f"ordered {item}", 201
