from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.multiprocess import directory
from flask_signal_metrics.multiprocess._compat import client_writes_files
from flask_signal_metrics.multiprocess.directory import multiprocess

from ..conftest import make_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def traffic_samples(naming: str) -> Samples:
    """The same requests on a new app; every sample the process then exposes."""
    registry = CollectorRegistry()
    app = make_app()
    SignalMetrics(app, registry=registry, naming=naming)
    client = app.test_client()
    for path in ["/item/1", "/item/2", "/boom", "/nope", "/page", "/stream", "/dir"]:
        client.get(path).close()
    client.post("/echo", data=b"x" * 700)
    for i in range(4):
        client.get(f"/abort?{i}")
        client.put("/echo")
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        for s in m.samples
        # Durations differ between two runs; body sizes do not.
        if not s.name.endswith(("_created", "_duration_seconds_sum"))
        # multiprocess mode only
        and not s.name.startswith(("flask_worker_", "flask_signal_metrics_scrapes_refused"))
    }


def in_a_worker(script: str, directory: Path, *args: str) -> str:
    """Run ``script`` in a new process in multiprocess mode (``directory``); its output.

    prometheus_client chooses multiprocess mode when first imported, so the
    mode needs a process of its own.
    """
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        cwd=Path(__file__).parent.parent.parent,
        timeout=60,
        check=True,
    ).stdout


def pretend_multiprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our code decides as in multiprocess mode; prometheus_client's own values stay in memory.

    Patched in each module of ours that imported the decision.
    """
    real = (directory.multiprocess, client_writes_files)
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("flask_signal_metrics"):
            continue
        for attribute in ("multiprocess", "client_writes_files"):
            if getattr(module, attribute, None) in real:
                monkeypatch.setattr(module, attribute, lambda: True)
