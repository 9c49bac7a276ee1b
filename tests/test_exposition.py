from __future__ import annotations

import base64
import gzip
import re
import subprocess
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry

from flask_signal_metrics import exposition
from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.multiprocess import directory
from flask_signal_metrics.multiprocess.directory import refused_counter

from .conftest import Blocking
from .conftest import make_app
from .conftest import real_binary
from .conftest import total_requests
from .servers import lock_held

PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;"
    "escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, "text/plain; version=0.0.4"),
        ("text/plain", "text/plain; version=0.0.4"),
        (PROMETHEUS_2_ACCEPT, "application/openmetrics-text; version=1.0.0"),
        (PROMETHEUS_3_ACCEPT, "application/openmetrics-text; version=1.0.0"),
        ("text/plain;q=1, application/openmetrics-text;q=0", "text/plain; version=0.0.4"),
        ("application/openmetrics-text;q=0.2, text/plain;q=0.9", "text/plain; version=0.0.4"),
        ("application/json", "text/plain; version=0.0.4"),
        (";;;,,,q=x", "text/plain; version=0.0.4"),
        ("application/openmetrics-text; version=banana", "text/plain; version=0.0.4"),
        ("text/plain; version=9.9.9", "text/plain"),
        ("\x00" * 10, "text/plain; version=0.0.4"),
        ("a" * 10_000, "text/plain; version=0.0.4"),
    ],
)
def test_content_negotiation(client: FlaskClient, accept: str | None, content_type: str) -> None:
    client.get("/item/1")
    headers = {"Accept": accept} if accept is not None else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(content_type)
    assert b"http_server_request_duration_seconds" in response.data
    assert "Accept" in response.headers["Vary"]
    if content_type.startswith("application/openmetrics-text"):
        assert response.data.endswith(b"# EOF\n")


def test_gzip_when_accepted(client: FlaskClient) -> None:
    client.get("/item/1")
    plain = client.get("/metrics")
    zipped = client.get("/metrics", headers={"Accept-Encoding": "gzip, deflate"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert len(zipped.data) < len(plain.data)
    assert b"http_server_request_duration_seconds" in gzip.decompress(zipped.data)
    refused = client.get("/metrics", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in refused.headers


def test_methods(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 200
    head = client.head("/metrics")
    assert head.status_code == 200 and head.data == b""
    options = client.options("/metrics")
    assert options.status_code == 200
    assert set(options.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert client.open("/metrics", method=method).status_code == 405


def test_custom_path(registry: CollectorRegistry) -> None:
    app = make_app()
    SignalMetrics(app, registry=registry, path="/internal/metrics")
    client = app.test_client()
    assert client.get("/internal/metrics").status_code == 200
    assert client.get("/metrics").status_code == 404


def _busy_app(naming: str) -> Flask:
    app = make_app()
    SignalMetrics(app, naming=naming, labels={"service": "shop"})
    client = app.test_client()
    for path in ["/item/1", "/boom", "/page", "/nope", "/handled", "/stream"]:
        client.get(path).close()
    client.post("/echo", data=b"x" * 100)
    return app


@pytest.mark.real
@pytest.mark.parametrize("naming", ["otel", "classic"])
def test_promtool_check_metrics_has_no_complaint(naming: str) -> None:
    promtool = real_binary("promtool")
    body = _busy_app(naming).test_client().get("/metrics").data
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == b"" and result.stderr == b"", result.stdout + result.stderr


def test_name_filter(client: FlaskClient) -> None:
    client.get("/item/1")
    body = client.get(
        "/metrics?name[]=http_server_active_requests"
        "&name[]=http_server_request_duration_seconds_count"
    ).data.decode()
    families = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE")}
    assert families == {"http_server_active_requests", "http_server_request_duration_seconds"}
    assert "flask_signal_metrics_info" in client.get("/metrics").data.decode()


TOKEN = "s3cret-token-0123456789"


def _auth_app(registry: CollectorRegistry, **options: t.Any) -> FlaskClient:
    app = make_app()
    SignalMetrics(app, registry=registry, **options)
    return app.test_client()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic " + base64.b64encode(b"scraper:pw-123").decode()}, 200),
        ({"Authorization": "Basic " + base64.b64encode(b"scraper:wrong").decode()}, 401),
        ({"Authorization": "Basic " + base64.b64encode(b"other:pw-123").decode()}, 401),
        ({"Authorization": f"Bearer {TOKEN}"}, 200),
        ({"Authorization": "Bearer nope"}, 401),
        ({"Authorization": "Basic !!!not-base64"}, 401),
        ({"Authorization": "Digest username=x"}, 401),
    ],
)
def test_basic_and_bearer_auth(
    registry: CollectorRegistry, headers: dict[str, str], status: int
) -> None:
    client = _auth_app(registry, basic_auth=("scraper", "pw-123"), bearer_token=TOKEN)
    response = client.get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 401:
        challenge = response.headers["WWW-Authenticate"]
        assert 'Basic realm="metrics"' in challenge and 'Bearer realm="metrics"' in challenge
        assert b"http_server" not in response.data
    else:
        assert b"http_server_request_duration_seconds" in response.data
    # neither the scrapes nor the refusals are measured
    client.get("/item/1")
    assert total_requests(registry) == 1


def test_users_own_decorator(registry: CollectorRegistry) -> None:
    import functools

    from flask import abort
    from flask import request

    def local_only(view: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
        @functools.wraps(view)
        def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            if request.headers.get("X-From") != "prometheus":
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    client = _auth_app(registry, decorator=local_only)
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"X-From": "prometheus"}).status_code == 200
    assert total_requests(registry) == 0


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        ({"basic_auth": ("user", "")}, "(username, password) pair"),
        ({"basic_auth": "user:pw"}, "(username, password) pair"),
        ({"bearer_token": "short"}, "token_urlsafe"),
        ({"decorator": "login_required"}, "view decorator"),
    ],
)
def test_bad_auth_settings(options: dict[str, t.Any], fix: str) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(fix)):
        SignalMetrics(make_app(), **options)


def _multiprocess_client(monkeypatch: pytest.MonkeyPatch, lock_timeout: float) -> FlaskClient:
    """A client of an app whose scrapes read the multiprocess directory under its lock."""
    app = make_app()
    app.config["SIGNAL_METRICS_LOCK_TIMEOUT"] = lock_timeout
    SignalMetrics(app, registry=CollectorRegistry())
    monkeypatch.setattr(directory, "multiprocess", lambda: True)
    return app.test_client()


def test_a_scrape_the_lock_keeps_out_is_told_to_retry(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In multiprocess mode another process holding the directory's lock must
    # not hold the scrape's thread: 503 within SIGNAL_METRICS_LOCK_TIMEOUT.
    client = _multiprocess_client(monkeypatch, lock_timeout=0.2)
    with lock_held(multiproc_dir):
        started = time.monotonic()
        response = client.get("/metrics")
        assert time.monotonic() - started < 5
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert "no-store" in response.headers["Cache-Control"]
        assert client.get("/item/1").status_code == 200  # pages are not the lock's
    assert client.get("/metrics").status_code == 200


def _scrapes(
    client: FlaskClient, n: int, found: list[t.Any], **kw: t.Any
) -> list[threading.Thread]:
    """``n`` threads scraping ``/metrics`` once each, started; responses go to ``found``."""
    threads = [
        threading.Thread(target=lambda: found.append(client.get("/metrics", **kw)), daemon=True)
        for _ in range(n)
    ]
    for thread in threads:
        thread.start()
    return threads


def _refused(reason: str = "lock_timeout") -> float:
    [family] = refused_counter().collect()
    return sum(
        sample.value
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels == {"reason": reason}
    )


def test_every_scrape_that_joined_a_refused_render_is_counted(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # flask_signal_metrics_scrapes_refused_total counts the 503s scrapers saw,
    # not the renders: scrapes sharing one refused render are each counted.
    client = _multiprocess_client(monkeypatch, lock_timeout=2.0)
    before = _refused()
    found: list[t.Any] = []
    with lock_held(multiproc_dir):
        first = _scrapes(client, 1, found)
        time.sleep(0.2)
        others = _scrapes(client, 7, found)
        deadline = time.monotonic() + 10
        while exposition._RENDERS.waiting() < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert exposition._RENDERS.waiting() == 7  # all joined the first render
        for thread in first + others:
            thread.join(10)
    assert [response.status_code for response in found] == [503] * 8
    assert _refused() - before == 8


def test_concurrent_scrapes_share_one_render(client: FlaskClient, blocking: Blocking) -> None:
    found: list[t.Any] = []
    first = _scrapes(client, 1, found)
    assert blocking.entered.wait(10)
    others = _scrapes(client, 9, found)
    deadline = time.monotonic() + 10
    while exposition._RENDERS.waiting() < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    blocking.release.set()
    for thread in first + others:
        thread.join(10)
    assert blocking.calls == 1
    assert [response.status_code for response in found] == [200] * 10
    assert len({response.data for response in found}) == 1
    assert b"blocking_renders 1.0" in found[0].data
    # Done: a later scrape renders anew.
    assert b"blocking_renders 2.0" in client.get("/metrics").data
    assert blocking.calls == 2


def test_a_scrape_waits_for_a_shared_render_within_its_bound(
    client: FlaskClient, blocking: Blocking, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exposition, "SHARED_RENDER_WAIT", 0.2, raising=False)
    found: list[t.Any] = []
    first = _scrapes(client, 1, found)
    assert blocking.entered.wait(10)
    [joined] = _scrapes(client, 1, found)
    joined.join(5)
    assert [response.status_code for response in found] == [503]
    assert found[0].headers["Retry-After"] == "1"
    blocking.release.set()
    first[0].join(10)
    assert [response.status_code for response in found] == [503, 200]
    assert blocking.calls == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": "application/openmetrics-text"},
        {"Accept-Encoding": "gzip"},
    ],
)
def test_scrapes_that_differ_render_apart(
    client: FlaskClient, blocking: Blocking, headers: dict[str, str]
) -> None:
    found: list[t.Any] = []
    first = _scrapes(client, 1, found)
    assert blocking.entered.wait(10)
    deadline = time.monotonic() + 10
    other = _scrapes(client, 1, found, headers=headers)
    while blocking.calls < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    blocking.release.set()
    for thread in first + other:
        thread.join(10)
    assert blocking.calls == 2
    assert sorted(response.status_code for response in found) == [200, 200]
