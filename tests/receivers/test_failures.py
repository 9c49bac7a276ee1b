"""A failing receiver never harms the request."""

from __future__ import annotations

import logging
import typing as t

import pytest
from prometheus_client import CollectorRegistry

from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.receivers import recording
from flask_signal_metrics.receivers import requests as request_receivers
from flask_signal_metrics.receivers import templates as template_receivers

from ..conftest import make_app
from ..conftest import value

# -- a failing receiver never harms the request ---------------------------------

#: signal -> (path, the receivers' modules that read the helper made to fail,
#: the helper, failures per request: /page flashes twice)
_BODIES = {
    "request-started": ("/item/3", (request_receivers,), "_begin", 1),
    "request-finished": ("/item/3", (request_receivers,), "current_context", 1),
    "got-request-exception": ("/boom", (request_receivers,), "_started", 1),
    "request-tearing-down": ("/item/3", (request_receivers, recording), "perf_counter", 1),
    "before-render-template": ("/page", (template_receivers,), "perf_counter", 1),
    "template-rendered": ("/page", (template_receivers,), "_renders", 1),
    "message-flashed": ("/page", (template_receivers,), "_in_excluded_request", 2),
}


@pytest.mark.parametrize("signal", sorted(_BODIES))
def test_failing_receiver_leaves_the_response_unchanged(
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    signal: str,
) -> None:
    path, modules, helper, per_request = _BODIES[signal]
    bare = make_app().test_client()
    app = make_app()
    SignalMetrics(app, registry=registry)
    client = app.test_client()
    calls = 0
    original = getattr(modules[0], helper)

    def broken(*args: t.Any, **kwargs: t.Any) -> t.Any:
        nonlocal calls
        calls += 1
        if _receiver_running(signal):
            raise OSError("disk on fire")
        return original(*args, **kwargs)

    class BrokenVariable:  # stands in for a context variable
        def get(self, *default: None) -> t.Any:
            return broken(*default)

    if helper == "_renders":
        original = original.get
    for module in modules:
        monkeypatch.setattr(module, helper, BrokenVariable() if helper == "_renders" else broken)
    caplog.set_level(logging.ERROR, logger="flask_signal_metrics")
    for _ in range(3):
        expected = bare.get(path)
        got = client.get(path)
        assert (got.status_code, got.data) == (expected.status_code, expected.data)
        assert got.headers.get("Content-Type") == expected.headers.get("Content-Type")
    assert calls >= 3
    errors = value(registry, "flask_signal_metrics_receiver_errors_total", signal=signal)
    assert errors == 3 * per_request
    ours = [r for r in caplog.records if r.name == "flask_signal_metrics"]
    assert len(ours) == 1, "logged once per cause"
    assert signal in ours[0].getMessage()
    assert client.get("/metrics").status_code == 200


def _receiver_running(signal: str) -> bool:
    """Whether the receiver of ``signal`` is on the stack (helpers are shared)."""
    import sys

    name = "on_" + signal.replace("-", "_")
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False
