"""Scrape storms and the render's cost, on an app with many request series.

    python bench/bench_storm.py --storm [--routes 100]    # port server, concurrent scrapes
    python bench/bench_storm.py --render [--routes 1000]  # render cost and request stalls

The app has ``routes`` URL rules, each requested with 2 methods and 3
statuses: ``routes * 6`` request series (1 000 routes: 6 000 series, about
258 000 sample lines).

``--storm`` serves the app's metrics on ``SIGNAL_METRICS_PORT`` in a process
of its own and times 1, 10 and 100 concurrent scrapes (as Prometheus asks:
OpenMetrics, gzip): p50 and p99 of each scrape's latency.

``--render`` times the app's ``/metrics`` render (text format) against
prometheus_client's ``generate_latest`` of a registry of the client's own
Histograms holding the same series (created series off, so both write the
same sample lines), per sample line; and, while a render runs, the longest
time a thread recording requests in the same process waited between two
recordings.

To measure another checkout of the package, put it first on the path:
``PYTHONPATH=/path/to/checkout python bench/bench_storm.py ...`` (the
package used is printed).
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

if t.TYPE_CHECKING:
    from flask import Flask

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("GET", "POST")
STATUSES = (200, 404, 500)
#: What Prometheus 2 sends.
ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def _app(routes: int, port: int | None = None) -> Flask:
    """An app with ``routes * 6`` request series, each requested once."""
    from flask import Flask
    from flask import request

    from flask_signal_metrics import SignalMetrics

    app = Flask("storm")
    if port is not None:
        app.config["SIGNAL_METRICS_PORT"] = port

    def view() -> tuple[str, int]:
        return "ok", int(request.args["status"])

    for i in range(routes):
        app.add_url_rule(f"/r{i}", f"r{i}", view, methods=list(METHODS))
    SignalMetrics(app, serve_default_registry=False, max_series=routes * 6 + 100)
    client = app.test_client()
    for i in range(routes):
        for method in METHODS:
            for status in STATUSES:
                client.open(f"/r{i}?status={status}", method=method).close()
    return app


# -- --storm ------------------------------------------------------------------------


def _serve(routes: int, port: int, backlog: int | None) -> None:
    """The server process: the app, its metrics on ``port``; says so, then waits."""
    if backlog is not None:
        import importlib

        # The server class of the code under test: port_server's PortServer,
        # exposition's before the split, the older unbounded one before that.
        try:
            module = importlib.import_module("flask_signal_metrics.port_server")
        except ImportError:
            module = importlib.import_module("flask_signal_metrics.exposition")
        server = getattr(module, "PortServer", None) or getattr(module, "_ThreadingServer")  # noqa: B009 (gone on this code)
        server.request_queue_size = backlog
    _app(routes, port)
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes it


#: A scrape answered later than this counts as failed (Prometheus' default scrape timeout: 10 s).
TIMEOUT = 120.0


def _scrape(port: int) -> float:
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/metrics", headers={"Accept": ACCEPT, "Accept-Encoding": "gzip"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"scrape answered {response.status}")
    finally:
        connection.close()
    return time.perf_counter() - start


def _round(port: int, concurrent: int, errors: list[str]) -> list[float]:
    """``concurrent`` scrapes started together; each one's seconds (inf: failed, in ``errors``)."""
    barrier = threading.Barrier(concurrent)
    found: list[float] = []

    def one() -> None:
        barrier.wait(60)
        try:
            found.append(_scrape(port))
        except (OSError, RuntimeError) as e:  # timed out, refused, reset, not a 200
            errors.append(type(e).__name__)
            found.append(float("inf"))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(concurrent)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT + 60)
    return found + [float("inf")] * (concurrent - len(found))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def storm(routes: int, scrapes: int, backlog: int | None) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--routes", str(routes)]
        + ([] if backlog is None else ["--backlog", str(backlog)]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the server did not start")
        _scrape(port)  # warm up
        size = _size(port)
        queue = "the server's" if backlog is None else str(backlog)
        print(
            f"port server, {routes * 6} request series, {size / 1e6:.1f} MB per scrape,"
            f" listen backlog {queue}"
        )
        print(f"failed: no answer within {TIMEOUT:g} s, or not a 200 (counted as slowest)")
        print(f"{'concurrent':>10} {'scrapes':>8} {'p50 ms':>9} {'p99 ms':>9} {'failed':>7}")
        for concurrent in (1, 10, 100):
            latencies: list[float] = []
            errors: list[str] = []
            while len(latencies) < max(scrapes, concurrent):
                latencies += _round(port, concurrent, errors)
            kinds = ", ".join(f"{errors.count(kind)} {kind}" for kind in sorted(set(errors)))
            print(
                f"{concurrent:10} {len(latencies):8} {_percentile(latencies, 0.5) * 1e3:9.1f}"
                f" {_percentile(latencies, 0.99) * 1e3:9.1f} {len(errors):7} {kinds}"
            )
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # still rendering for scrapes that gave up
            server.kill()
            server.wait(30)


def _size(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", "/metrics")
        return len(connection.getresponse().read())
    finally:
        connection.close()


# -- --render -----------------------------------------------------------------------


def _client_registry(routes: int) -> t.Any:
    """prometheus_client's own Histograms holding the same series, observed once each."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import Histogram

    from flask_signal_metrics.metrics.names import DURATION
    from flask_signal_metrics.metrics.names import HTTP_LABELS
    from flask_signal_metrics.metrics.names import REQUEST_SIZE
    from flask_signal_metrics.metrics.names import RESPONSE_SIZE

    registry = CollectorRegistry()
    families = [
        Histogram(DURATION, "d", HTTP_LABELS, registry=registry),
        Histogram(
            REQUEST_SIZE,
            "s",
            HTTP_LABELS,
            registry=registry,
            buckets=_size_buckets(),
        ),
        Histogram(
            RESPONSE_SIZE,
            "s",
            HTTP_LABELS,
            registry=registry,
            buckets=_size_buckets(),
        ),
    ]
    for i in range(routes):
        for method in METHODS:
            for status in STATUSES:
                error = "500" if status == 500 else ""
                for family in families:
                    family.labels(method, f"/r{i}", str(status), "http", error).observe(0.001)
    return registry


def _size_buckets() -> list[float]:
    from flask_signal_metrics import config

    return list(config.load({}, {}, environ={}).size_buckets)


def _lines(body: bytes) -> int:
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))


def _best(make: t.Callable[[], bytes], rounds: int) -> tuple[float, bytes]:
    times, body = [], b""
    for _ in range(rounds):
        start = time.perf_counter()
        body = make()
        times.append(time.perf_counter() - start)
    return statistics.median(times), body


def render(routes: int, rounds: int) -> None:
    import prometheus_client
    from prometheus_client import generate_latest

    from flask_signal_metrics.metrics.render import render as render_metrics
    from flask_signal_metrics.state import get_state

    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    app = _app(routes)
    state = get_state(app)
    assert state.metrics is not None
    collectors = state.collectors
    theirs = _client_registry(routes)
    start = time.perf_counter()
    render_metrics(collectors, [])
    first_s = time.perf_counter() - start
    ours_s, ours_body = _best(lambda: render_metrics(collectors, [])[0], rounds)
    render_metrics(collectors, ["application/openmetrics-text"])
    ours_om_s, ours_om_body = _best(
        lambda: render_metrics(collectors, ["application/openmetrics-text"])[0], rounds
    )
    theirs_s, theirs_body = _best(lambda: generate_latest(theirs), rounds)
    lines, theirs_lines = _lines(ours_body), _lines(theirs_body)
    ours_us = ours_s / lines * 1e6
    theirs_us = theirs_s / theirs_lines * 1e6
    print(
        f"{routes * 6} request series, {lines} sample lines, {len(ours_body) / 1e6:.1f} MB;"
        f" median of {rounds} renders"
    )
    print(
        f"ours {ours_us:.3f} µs per sample line ({ours_s * 1e3:.0f} ms), generate_latest"
        f" {theirs_us:.3f} ({theirs_lines} lines, {theirs_s * 1e3:.0f} ms),"
        f" ratio {ours_us / theirs_us:.2f}"
    )
    print(f"ours, first render (learns each series' text): {first_s * 1e3:.0f} ms")
    print(
        f"ours, OpenMetrics: {ours_om_s / _lines(ours_om_body) * 1e6:.3f} µs per sample line"
        f" ({ours_om_s * 1e3:.0f} ms)"
    )
    gaps = [
        _stall(state.metrics.requests, lambda: render_metrics(collectors, [])[0])
        for _ in range(rounds)
    ]
    print(
        "longest wait of a thread recording requests during a render, median and most of"
        f" {rounds}: {statistics.median(gaps) * 1e3:.1f} ms, {max(gaps) * 1e3:.1f} ms"
    )


def _stall(requests: t.Any, make: t.Callable[[], bytes]) -> float:
    """The longest time between two recordings of a thread recording requests
    (one every millisecond) while ``make`` runs, less the millisecond."""
    from flask_signal_metrics.metrics.names import Observation

    key = ("GET", "/r0", "200", "http", "")
    done = threading.Event()
    started = threading.Event()
    longest = 0.0

    def record() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            requests.record(key, None, Observation(0.001, 0, 2))
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now
            started.set()
            time.sleep(0.001)

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    started.wait(10)
    longest = 0.0
    make()
    done.set()
    thread.join(10)
    return max(0.0, longest - 0.001)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storm", action="store_true")
    parser.add_argument("--render", action="store_true")
    parser.add_argument("--routes", type=int)
    parser.add_argument("--rounds", type=int, default=5, help="renders timed (--render)")
    parser.add_argument("--scrapes", type=int, default=100, help="at least, per concurrency")
    parser.add_argument(
        "--backlog", type=int, help="the port server's listen backlog (--storm; default: its own)"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        _serve(args.routes, args.serve, args.backlog)
        return 0
    import flask_signal_metrics

    print(f"package: {os.path.dirname(flask_signal_metrics.__file__)}")
    if args.render or not args.storm:
        render(args.routes or 1000, args.rounds)
    if args.storm or not args.render:
        storm(args.routes or 100, args.scrapes, args.backlog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
