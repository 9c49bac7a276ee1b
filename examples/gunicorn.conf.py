"""gunicorn settings for several worker processes: all the set-up a deployment needs.

    gunicorn -c examples/gunicorn.conf.py examples.app:app

Every worker records into prometheus_client's multiprocess directory, and
whichever worker answers ``/metrics`` sums all of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import typing as t

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = os.environ.get("WORKER_CLASS", "gthread")
threads = 4

# prometheus_client decides when it is first imported whether it runs in
# multiprocess mode, from this variable. gunicorn reads this file before it
# loads the app (also with preload_app, which loads it before any server
# hook runs), so this is the place; nothing above imports prometheus_client.
multiproc_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(tempfile.gettempdir(), f"flask-signal-metrics-{os.getpid()}"),
)
# Files left by an earlier run are earlier numbers: start empty. (Here and not
# in on_starting, which runs after preload_app has written its first files.)
shutil.rmtree(multiproc_dir, ignore_errors=True)
os.makedirs(multiproc_dir)


def child_exit(server: t.Any, worker: t.Any) -> None:
    # A dead worker's in-flight gauge stops counting (livesum), and its files
    # are folded into compacted ones, so scrapes do not slow down with restarts.
    from flask_signal_metrics import worker_exited

    worker_exited(worker.pid)


def when_ready(server: t.Any) -> None:
    # METRICS_PORT=9100: serve the metrics of every worker on a port of their
    # own, from the master, instead of (or besides) the app's /metrics.
    port = os.environ.get("METRICS_PORT")
    if port:
        from flask_signal_metrics import start_metrics_server

        start_metrics_server(int(port), os.environ.get("METRICS_ADDR", "127.0.0.1"))
