"""The demo's GET /items/1 (a rendered template) in one worker, for instruction counts.

    python bench/bench_instructions.py --bench demo

What ``bench_load.py`` drives under gunicorn, without gunicorn: the example
app called as a WSGI app in one process, so the cost of each part can be
counted exactly. bench_load.py's requests/s ratio is bounded by these counts
(a CPU-bound server answers in proportion to its instructions per request).

Variants (each in a process of its own: prometheus_client chooses its
multiprocess mode when it is first imported, from the environment):
  bare      the example app with SIGNAL_METRICS_ENABLED=false
  floor     bare plus a no-op receiver on each of the five signals such a
            request sends (request_started, request_finished,
            request_tearing_down, before_render_template, template_rendered):
            what any signal-driven design pays on this route
  single    the extension, one process
  multi     the extension in prometheus_client's multiprocess mode, as every
            gunicorn worker runs it (PROMETHEUS_MULTIPROC_DIR set)
"""

from __future__ import annotations

import os
import sys
import tempfile
import typing as t
from pathlib import Path

if t.TYPE_CHECKING:
    from flask import Flask

ROOT = Path(__file__).resolve().parent.parent

#: The signals a GET /items/1 sends.
SENT = (
    "request_started",
    "request_finished",
    "request_tearing_down",
    "before_render_template",
    "template_rendered",
)


def _demo(enabled: bool, multiprocess: bool = False) -> Flask:
    os.environ["FLASK_SIGNAL_METRICS_ENABLED"] = "true" if enabled else "false"
    if multiprocess:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-demo-")
    sys.path.insert(0, str(ROOT))
    from examples.app import app

    return app


def _noop(sender: object, **extra: object) -> None:
    pass


def bare() -> tuple[Flask, None]:
    return _demo(False), None


def floor() -> tuple[Flask, None]:
    from flask import signals

    app = _demo(False)
    for name in SENT:
        getattr(signals, name).connect(_noop, sender=app, weak=False)
    return app, None


def floor_app() -> Flask:
    """The floor as one app: what bench_load.py serves with ``bench_demo:floor_app()``."""
    return floor()[0]


def single() -> tuple[Flask, None]:
    return _demo(True), None


def multi() -> tuple[Flask, None]:
    return _demo(True, multiprocess=True), None


VARIANTS: dict[str, t.Callable[[], tuple[Flask, None]]] = {
    "bare": bare,
    "floor": floor,
    "single": single,
    "multi": multi,
}

if __name__ == "__main__":
    print(__doc__)
