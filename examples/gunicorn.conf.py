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
#
# The directory is private: another user who could open its lock file could
# hold it, and one who could write the directory could plant files in it.
# Without the variable a new one is made (random name, mode 0700) and removed
# at exit; a directory you set is yours: of it only what a run writes there
# (its *.db files and the lock) is removed, never anything else.
_MADE_BY = "MULTIPROC_DIR_MADE_BY_PID"  # not FLASK_*: the app reads those as its config
_LOCK = ".flask-signal-metrics.lock"
multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if multiproc_dir and os.environ.get(_MADE_BY) == str(os.getpid()):
    pass  # this file read again by its master (a reload, HUP): this run's numbers
elif multiproc_dir:
    # Files left by an earlier run are earlier numbers: start without them.
    # (Here and not in on_starting, which runs after preload_app has written
    # its first files.)
    os.makedirs(multiproc_dir, mode=0o700, exist_ok=True)
    for entry in os.scandir(multiproc_dir):
        if (entry.name.endswith(".db") or entry.name == _LOCK) and not entry.is_dir(
            follow_symlinks=False
        ):
            os.remove(entry.path)  # a symbolic link is removed, not followed
else:
    multiproc_dir = tempfile.mkdtemp(prefix="flask-signal-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    os.environ[_MADE_BY] = str(os.getpid())


def on_exit(server: t.Any) -> None:
    # The directory made above goes with its master, unless a new master (an
    # upgrade, USR2) took it over.
    made = os.environ.get(_MADE_BY) == str(os.getpid())
    if made and not getattr(server, "reexec_pid", 0):
        shutil.rmtree(multiproc_dir, ignore_errors=True)


# Imported here, once the variable above is set: at a worker's exit the master
# then replaces it at once, instead of first importing Flask and the rest.
from flask_signal_metrics import worker_exited  # noqa: E402


def child_exit(server: t.Any, worker: t.Any) -> None:
    # A dead worker's in-flight gauge stops counting (livesum), and its files
    # are folded into compacted ones, so scrapes do not slow down with restarts.
    worker_exited(worker.pid)


def when_ready(server: t.Any) -> None:
    # METRICS_PORT=9100: serve the metrics of every worker on a port of their
    # own, from the master, instead of (or besides) the app's /metrics.
    # METRICS_BEARER_TOKEN: scrapes must send it (Prometheus's `authorization`
    # scrape setting); without it, every local user can read the port.
    port = os.environ.get("METRICS_PORT")
    if port:
        from flask_signal_metrics import start_metrics_server

        start_metrics_server(
            int(port),
            os.environ.get("METRICS_ADDR", "127.0.0.1"),
            bearer_token=os.environ.get("METRICS_BEARER_TOKEN") or None,
        )
