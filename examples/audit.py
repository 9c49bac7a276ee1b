"""The access audit log from the tutorials, with metrics and a timed export.

``access-event`` is sent by modules (the sender is a module name, not the
app); a receiver persists each record. The extension counts accesses by
module, and times report exports from ``export-started`` to
``export-finished``, matched by export id::

    flask_signal_access_event_total{module="dashboard_module"} 1.0
    flask_signal_export_started_to_export_finished_duration_seconds_count{format="csv"} 1.0

    flask --app examples.audit run
"""

from __future__ import annotations

import itertools
import time

from blinker import Namespace
from flask import Flask

from flask_signal_metrics import SignalMetrics

event_bus = Namespace()
access_logged = event_bus.signal("access-event")
export_started = event_bus.signal("export-started")
export_finished = event_bus.signal("export-finished")

MODULES = {"dashboard_module", "reports_module", "admin_module"}

app = Flask(__name__)
signal_metrics = SignalMetrics(app)
audit_log: list[dict[str, object]] = []
_export_ids = itertools.count(1)


@signal_metrics.count(
    access_logged,
    labels={"module": lambda sender, **kw: sender},
    allowed={"module": MODULES},
)
def persist_access_record(sender: str, **extra: object) -> None:
    audit_log.append({"module": sender, "at": time.time(), **extra})


signal_metrics.time(
    export_started,
    export_finished,
    key=lambda sender, **kw: kw["export_id"],
    labels={"format": lambda sender, **kw: kw["format"]},
    allowed={"format": {"csv", "pdf"}},
)


@app.get("/dashboard")
def dashboard() -> str:
    access_logged.send("dashboard_module", user="alice")
    return "dashboard"


@app.post("/reports/export.<fmt>")
def export(fmt: str) -> str:
    export_id = next(_export_ids)
    export_started.send("reports_module", export_id=export_id)
    access_logged.send("reports_module", user="alice")
    time.sleep(0.01)  # the export's work
    export_finished.send("reports_module", export_id=export_id, format=fmt)
    return f"export {export_id} done"
