"""The request context's shim: Flask's own variable where it has one, else public API."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import typing as t
from importlib.metadata import version

import flask.globals
import pytest
from flask import copy_current_request_context
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_signal_metrics import _compat
from flask_signal_metrics import receivers
from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.receivers import requests
from flask_signal_metrics.receivers import templates

from .conftest import add_copying_view
from .conftest import in_flight
from .conftest import make_app
from .conftest import requests_counted
from .conftest import ROOT
from .conftest import total_requests


def test_this_flask_has_the_fast_path() -> None:
    """Fails when a Flask release drops ``flask.globals._cv_request``.

    The receivers then still work (the public way, tested below) but each
    read of the context is a call through a proxy: find that Flask's
    context variable and give _compat.select() its fast path.
    """
    assert _compat.FAST, f"Flask {version('flask')} has no flask.globals._cv_request"
    assert receivers.environ.current_context == _compat.current_context.get
    assert _compat.current_context is flask.globals._cv_request


def _contexts_seen(context: _compat.ContextVariable) -> tuple[list[object], list[object]]:
    """What ``context`` gives in two requests and a copied context of each, and outside."""
    app = Flask("seen")
    inside: list[object] = []

    @app.get("/")
    def index() -> str:
        inside.append(context.get())

        @copy_current_request_context
        def job() -> None:
            inside.append(context.get(None))

        worker = threading.Thread(target=job)
        worker.start()
        worker.join(10)
        return "ok"

    client = app.test_client()
    for _ in range(2):
        assert client.get("/").status_code == 200
    outside: list[object] = [context.get(None)]
    with app.app_context():
        outside.append(context.get(None))
    return inside, outside


def test_the_public_way_finds_this_request_and_each_copy_of_it() -> None:
    public, public_outside = _contexts_seen(_compat.PublicContext())
    assert len(public) == len({id(c) for c in public}) == 4, "one object per request and copy"
    assert all(c is not None and c.request.path == "/" for c in public)  # type: ignore[attr-defined]
    assert public_outside == [None, None]
    if _compat.FAST:
        # Flask's own variable gives the same kind of object in the same places.
        own, own_outside = _contexts_seen(_compat.current_context)
        assert [type(c) for c in own] == [type(c) for c in public]
        assert own_outside == [None, None]


def test_copied_contexts_are_recorded_by_the_public_way(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = _compat.PublicContext()
    for module in (requests, templates):  # each reads the context it imported
        monkeypatch.setattr(module, "current_context", public.get)
    app = make_app()
    SignalMetrics(app, registry=registry, serve_default_registry=False)
    add_copying_view(app)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/work").status_code == 200
    assert client.get("/boom").status_code == 500
    assert requests_counted(registry, "/work", 200) == 3
    assert requests_counted(registry, "/boom", 500, error="ValueError") == 1
    assert total_requests(registry) == 4
    assert in_flight(registry) == 0


#: A process whose Flask has no ``_cv_request`` from before the package is imported.
_WITHOUT_PRIVATE_NAME = textwrap.dedent(
    """
    import json, threading
    import flask.globals
    vars(flask.globals).pop("_cv_request", None)  # gone already on a newer Flask
    from flask import Flask, copy_current_request_context
    from prometheus_client import CollectorRegistry
    from flask_signal_metrics import SignalMetrics

    app = Flask("without")
    registry = CollectorRegistry()
    SignalMetrics(app, registry=registry, serve_default_registry=False)

    @app.get("/work")
    def work():
        @copy_current_request_context
        def job():
            pass
        worker = threading.Thread(target=job)
        worker.start()
        worker.join(10)
        return "done"

    @app.get("/boom")
    def boom():
        raise ValueError("boom")

    client = app.test_client()
    statuses = [client.get("/work").status_code for _ in range(3)]
    statuses.append(client.get("/boom").status_code)
    counted = {}
    for metric in registry.collect():
        if metric.name == "http_server_request_duration_seconds":
            for sample in metric.samples:
                if sample.name.endswith("_count") and sample.value:
                    key = sample.labels["http_route"] + " " + sample.labels[
                        "http_response_status_code"]
                    counted[key] = sample.value
    print(json.dumps({"statuses": statuses, "counted": counted}))
    """
)


def test_receivers_without_flasks_private_context_variable() -> None:
    """As on a Flask without ``flask.globals._cv_request``: copies are not errors."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _WITHOUT_PRIVATE_NAME],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, t.Any] = json.loads(done.stdout)
    assert found["statuses"] == [200, 200, 200, 500]
    assert found["counted"] == {"/work 200": 3.0, "/boom 500": 1.0}


def test_flask_flags_an_app_that_handled_a_request() -> None:
    """Fails when Flask drops ``_got_first_request``: set-up after a request would then
    change the app before Flask's own ``add_url_rule`` refuses."""
    app = make_app()
    assert not _compat.handled_a_request(app)
    assert app.test_client().get("/item/1").status_code == 200
    assert _compat.handled_a_request(app), "the flag moved"
