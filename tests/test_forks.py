"""A forked child never waits on a lock another thread of its parent held at the fork."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Each case: set-up, the lock held (as another thread would hold it) while
#: the process forks, and what the child then does with the object.
CASES = {
    "family": (
        """
        from prometheus_client import CollectorRegistry, Counter
        from flask_signal_metrics.metrics.family import Family
        registry = CollectorRegistry()
        overflow = Counter("overflow", "o", registry=registry)
        family = Family(Counter("jobs", "j", ["queue"], registry=registry), (), 10, overflow)
        held = family._lock
        """,
        "family.child(('mail',)).inc()",
    ),
    "request series": (
        """
        from flask_signal_metrics.metrics.cells import RequestStats
        from flask_signal_metrics.metrics.names import Observation
        stats = RequestStats(naming="otel", buckets=[0.1], size_buckets=[10.0],
                             static_labels=(), max_series=10, overflowed=())
        stats.record(("GET", "/", "200", "http", ""), None, Observation(0.01, 0, 5))
        held = stats._lock
        stats._cells[("GET", "/", "200", "http", "")].fold_lock.acquire()
        """,
        "stats.record(('GET', '/x', '200', 'http', ''), None, Observation(0.01, 0, 5));"
        " stats.collect()",
    ),
    "file histogram": (
        """
        from prometheus_client import CollectorRegistry
        from flask_signal_metrics.metrics.names import HistogramSpec
        from flask_signal_metrics.multiprocess.files import FileHistogram
        spec = HistogramSpec("renders", "r", ("template",), (0.1,))
        histogram = FileHistogram(spec, CollectorRegistry())
        held = histogram._lock
        """,
        "histogram.labels('page.html').observe(0.01); histogram.collect()",
    ),
    "declared timing": (
        """
        from flask import Flask
        from flask.signals import Namespace
        from prometheus_client import CollectorRegistry
        from flask_signal_metrics import SignalMetrics
        signals = Namespace()
        started, ended = signals.signal("job-started"), signals.signal("job-ended")
        app = Flask("forks")
        ext = SignalMetrics(app, registry=CollectorRegistry())
        ext.time(started, ended, key=lambda sender, **kw: kw["job"])
        timed = next(iter(started.receivers.values())).__self__
        held = timed._lock
        """,
        "started.send(app, job=1); ended.send(app, job=1)",
    ),
    "worker stats": (
        # Its first refresh in the child is its thread's: a lock stuck in
        # the refresh holds that thread, not the child.
        """
        import threading
        from prometheus_client import CollectorRegistry
        from flask_signal_metrics.multiprocess.workers import WorkerStats
        held = threading.Lock()
        stats = WorkerStats(CollectorRegistry())
        refresh = stats.refresh
        def stuck():
            with held:
                refresh()
        stats.refresh = stuck
        stats.start()
        """,
        "pass",
    ),
}

SCRIPT = """
import os, signal, sys
{setup}
held.acquire()
pid = os.fork()
if pid == 0:
    signal.alarm(10)  # a child that waits is killed, and says so by its status
    {child}
    os._exit(0)
held.release()
_, status = os.waitpid(pid, 0)
print("child", "done" if os.waitstatus_to_exitcode(status) == 0 else f"stuck ({{status}})")
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_lock_held_at_a_fork_is_new_in_the_child(case: str, tmp_path: Path) -> None:
    setup, child = CASES[case]
    result = _run(SCRIPT.format(setup=textwrap.dedent(setup), child=child), tmp_path)
    assert result.stdout.strip() == "child done", result.stderr


def _run(script: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a process of its own, in multiprocess mode in ``directory``.

    prometheus_client reads its mode at import, and forking pytest (with
    threads of earlier tests) is not these tests' business.
    """
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parent.parent,
    )


WORKER_STATS = """
import os, threading
from prometheus_client import CollectorRegistry
from flask_signal_metrics.metrics.names import Observation
from flask_signal_metrics.multiprocess.files import FileRequestStats
from flask_signal_metrics.multiprocess.workers import WorkerStats
WorkerStats(CollectorRegistry()).start()
stats = FileRequestStats(naming="otel", buckets=[0.1], size_buckets=[10.0],
                         static_labels=(), max_series=10, overflowed=())
def threads():
    return [thread.name for thread in threading.enumerate()].count("flask-signal-metrics:workers")
for parent_recorded in (False, True):
    if parent_recorded:
        stats.record(("GET", "/", "200", "http", ""), None, Observation(0.01, 0, 5))
    pid = os.fork()
    if pid == 0:
        before = threads()
        stats.record(("GET", "/", "200", "http", ""), None, Observation(0.01, 0, 5))
        os._exit(10 * before + threads())
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    print(parent_recorded, code // 10, code % 10)
"""


def test_a_forked_child_starts_its_worker_metrics_when_it_first_records(tmp_path: Path) -> None:
    # gunicorn's preload_app forks workers from a master that built the app
    # (and may have rendered or sent a warm-up request): each worker starts
    # its per-worker process metrics with its first recorded value. A helper
    # a worker forks (multiprocessing) records nothing and starts nothing:
    # nothing would mark it dead, and its series would stay.
    result = _run(WORKER_STATS, tmp_path)
    assert result.stdout.split() == ["False", "0", "1", "True", "0", "1"], result.stderr


TRACER_LOOKUP = """
import os, time
from flask import Flask
from prometheus_client import CollectorRegistry
from flask_signal_metrics import SignalMetrics
app = Flask("forks")
app.get("/")(lambda: "ok")
SignalMetrics(app, registry=CollectorRegistry())
app.test_client().get("/")
tracing = app.extensions["signal_metrics"].tracing
print("parent", tracing.idle_until > time.perf_counter(), flush=True)
pid = os.fork()
if pid == 0:
    print("child", tracing.idle_until, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_forked_worker_looks_its_tracer_provider_up_at_its_first_request(
    tmp_path: Path,
) -> None:
    """The parent found none and waits a second; the child (post_fork may set one) does not."""
    result = _run(TRACER_LOOKUP, tmp_path)
    assert result.stdout.split() == ["parent", "True", "child", "-inf"], result.stderr
