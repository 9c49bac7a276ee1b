"""Per-request cost of the extension, side by side with its peers, in one process.

Each variant is the same Flask app (one route with a parameter, a small body)
called as a WSGI app directly, so only the instrumentation differs. Rounds are
interleaved, in a new random order each time, so that drift of the machine
hits every variant alike; the garbage collector is paused inside a round (as
timeit does) and run between rounds. Overheads are taken per round (variant
minus bare Flask in the same round), and the median over rounds is printed.
bench_instructions.py counts instructions instead, free of the noise.

    python bench/bench_requests.py [--requests N] [--rounds R] [--threads T]

Variants:
  bare      Flask with nothing connected
  floor     three no-op receivers on request_started / request_finished /
            request_tearing_down: the least any signal-driven design can cost
  ours      SignalMetrics (metrics only)
  lean      a reference design, not shipped: three receivers that record the
            duration, both body sizes and in-flight with prometheus_client's
            own Histogram.observe / Gauge.inc / Gauge.dec on cached children,
            and nothing else (no exclusions, no error type, no exactly-once
            guard): what "nothing avoidable on the request path" costs when
            the metrics library does the recording
  least     a reference design, not shipped: three receivers that take a
            start time, count in flight, and append (rule, status, duration,
            response length) to a list: what recording anything through
            Flask's signals costs at least, with no label values, exclusions,
            series lookup, error type, request size or buckets
  pfe       prometheus-flask-exporter's PrometheusMetrics on the same app
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import statistics
import sys
import threading
import time
import typing as t

from flask import Flask
from flask import signals
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

from flask_signal_metrics import SignalMetrics

WSGIApp = t.Callable[[dict[str, t.Any], t.Callable[..., t.Any]], t.Iterable[bytes]]


def _app() -> Flask:
    app = Flask("bench")

    @app.get("/item/<int:item_id>")
    def item(item_id: int) -> str:
        return f"item {item_id}"

    return app


def bare() -> tuple[Flask, CollectorRegistry | None]:
    return _app(), None


def _noop(sender: Flask, **extra: object) -> None:
    pass


def _connect(app: Flask, *receivers: t.Callable[..., None]) -> None:
    """Connect receivers to request_started, request_finished, request_tearing_down."""
    signals_ = (signals.request_started, signals.request_finished, signals.request_tearing_down)
    for signal, receiver in zip(signals_, receivers, strict=True):
        signal.connect(receiver, sender=app, weak=False)


def floor() -> tuple[Flask, CollectorRegistry | None]:
    app = _app()
    _connect(app, _noop, _noop, _noop)
    return app, None


def ours() -> tuple[Flask, CollectorRegistry | None]:
    app = _app()
    registry = CollectorRegistry()
    SignalMetrics(app, registry=registry, serve_default_registry=False)
    return app, registry


def lean() -> tuple[Flask, CollectorRegistry | None]:
    from prometheus_client import Gauge
    from prometheus_client import Histogram

    from flask_signal_metrics._compat import current_context as _cv_request
    from flask_signal_metrics.config import SIZE_BUCKETS

    app = _app()
    registry = CollectorRegistry()
    names = ("method", "route", "status", "scheme", "error")
    duration = Histogram("lean_duration_seconds", "d", names, registry=registry)
    sizes = [
        Histogram(f"lean_{n}_bytes", n, names, registry=registry, buckets=SIZE_BUCKETS)
        for n in ("request", "response")
    ]
    active = Gauge("lean_active", "a", ("method", "scheme"), registry=registry)
    series: dict[tuple[str, ...], tuple[t.Any, ...]] = {}
    perf_counter = time.perf_counter

    def started(sender: Flask, **extra: object) -> None:
        request = _cv_request.get().request
        active.labels(request.method, request.scheme).inc()
        request.environ["lean.start"] = perf_counter()

    def finished(sender: Flask, response: t.Any, **extra: object) -> None:
        _cv_request.get().request.environ["lean.response"] = response

    def tearing_down(sender: Flask, **extra: object) -> None:
        request = _cv_request.get().request
        environ = request.environ
        response = environ["lean.response"]
        rule = request.url_rule
        key = (request.method, rule.rule if rule else "", str(response.status_code), "http", "")
        found = series.get(key)
        if found is None:
            found = series[key] = (
                duration.labels(*key),
                sizes[0].labels(*key),
                sizes[1].labels(*key),
                active.labels(request.method, request.scheme),
            )
        found[0].observe(perf_counter() - environ["lean.start"])
        found[1].observe(0)
        found[2].observe(response.content_length)
        found[3].dec()

    _connect(app, started, finished, tearing_down)
    return app, registry


def least() -> tuple[Flask, CollectorRegistry | None]:
    from flask_signal_metrics._compat import current_context as _cv_request

    app = _app()
    started_count, finished_count = itertools.count(), itertools.count()
    recorded: list[tuple[t.Any, ...]] = []
    perf_counter = time.perf_counter

    def started(sender: Flask, **extra: object) -> None:
        next(started_count)
        _cv_request.get().request.environ["least.start"] = perf_counter()

    def finished(sender: Flask, response: t.Any, **extra: object) -> None:
        _cv_request.get().request.environ["least.response"] = response

    def tearing_down(sender: Flask, **extra: object) -> None:
        request = _cv_request.get().request
        environ = request.environ
        response = environ["least.response"]
        duration = perf_counter() - environ["least.start"]
        recorded.append((request.url_rule, response.status_code, duration, response.content_length))
        next(finished_count)
        if len(recorded) > 256:
            recorded.clear()

    _connect(app, started, finished, tearing_down)
    return app, None


def pfe() -> tuple[Flask, CollectorRegistry | None]:
    from prometheus_flask_exporter import PrometheusMetrics

    app = _app()
    registry = CollectorRegistry()
    PrometheusMetrics(app, registry=registry)
    return app, registry


def _decorated(metrics: t.Any, *, status: t.Callable[..., t.Any]) -> Flask:
    """The bench's view with two decorator metrics: a counter by status, a histogram."""
    app = Flask("bench")
    Decorator = t.Callable[[t.Callable[[int], str]], t.Callable[[int], str]]
    count = t.cast(
        Decorator, metrics.counter("items_by_status", "By status.", labels={"status": status})
    )
    timed = t.cast(Decorator, metrics.histogram("item_seconds", "Item latency."))

    @app.get("/item/<int:item_id>")
    @count
    @timed
    def item(item_id: int) -> str:
        return f"item {item_id}"

    return app


def ours_views() -> tuple[Flask, CollectorRegistry | None]:
    registry = CollectorRegistry()
    ext = SignalMetrics(registry=registry, serve_default_registry=False)
    app = _decorated(ext, status=lambda r: r.status_code)
    ext.init_app(app)
    return app, registry


def pfe_views() -> tuple[Flask, CollectorRegistry | None]:
    from prometheus_flask_exporter import PrometheusMetrics

    registry = CollectorRegistry()
    metrics = PrometheusMetrics.for_app_factory(registry=registry)
    app = _decorated(metrics, status=lambda r: r.status_code)
    metrics.init_app(app)
    return app, registry


VARIANTS: dict[str, t.Callable[[], tuple[Flask, CollectorRegistry | None]]] = {
    "bare": bare,
    "floor": floor,
    "ours": ours,
    "lean": lean,
    "least": least,
    "pfe": pfe,
    "ours_views": ours_views,
    "pfe_views": pfe_views,
}


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> None:
    pass


def run_round(app: WSGIApp, environ: dict[str, t.Any], n: int) -> float:
    """Seconds per request over ``n`` requests."""
    copy = environ.copy
    start = time.perf_counter()
    for _ in range(n):
        body = app(copy(), _start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - start) / n


def measure(
    apps: dict[str, Flask], environ: dict[str, t.Any], args: argparse.Namespace
) -> dict[str, list[float]]:
    """Seconds per request of each app, per round: rounds interleaved in random order.

    Each app is warmed up first (routing caches, first series); the garbage
    collector is paused inside a round and run between rounds.
    """
    for app in apps.values():
        run_round(app.wsgi_app, environ, 500)
    times: dict[str, list[float]] = {name: [] for name in apps}
    order = list(apps)
    shuffle = random.Random(1).shuffle
    for _ in range(args.rounds):
        shuffle(order)
        for name in order:
            gc.collect()
            gc.disable()
            try:
                times[name].append(_timed(apps[name].wsgi_app, environ, args))
            finally:
                gc.enable()
    return times


def _timed(app: WSGIApp, environ: dict[str, t.Any], args: argparse.Namespace) -> float:
    """Seconds per request of one round, spread over ``args.threads`` threads."""
    threads: int = getattr(args, "threads", 1)
    if threads <= 1:
        return run_round(app, environ, args.requests)
    each: int = args.requests // threads
    workers = [
        threading.Thread(target=run_round, args=(app, environ, each)) for _ in range(threads)
    ]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - start) / (each * threads)


def arguments(doc: str, variants: t.Iterable[str], argv: list[str] | None) -> argparse.Namespace:
    """The options both request benchmarks take."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=30, help="rounds per variant")
    parser.add_argument("--only", nargs="*", default=list(variants), choices=list(variants))
    parser.add_argument(
        "--threads", type=int, default=1, help="spread each round over N threads (gthread-like)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, VARIANTS, argv)

    environ = EnvironBuilder(path="/item/42", method="GET").get_environ()
    apps = {name: VARIANTS[name]() for name in args.only}
    times = measure({name: app for name, (app, _) in apps.items()}, environ, args)

    median = {name: statistics.median(v) * 1e6 for name, v in times.items()}
    print(
        f"{args.rounds} rounds x {args.requests} requests of GET /item/42, one process,"
        f" {args.threads} thread(s)"
    )
    if "bare" not in times:
        for name, us in median.items():
            print(f"{name:8} {us:8.2f} us/req")
    else:
        # Overhead per round (variant minus bare in the same round, so that the
        # machine's drift cancels), then the median over rounds.
        over = {
            name: statistics.median(
                (v - b) * 1e6 for v, b in zip(times[name], times["bare"], strict=True)
            )
            for name in times
        }
        print(f"{'variant':8} {'us/req':>8} {'overhead':>9}  (medians)")
        for name, us in median.items():
            print(f"{name:8} {us:8.2f} {over[name]:9.2f}")
        if "pfe" in over:
            for name in ("floor", "least", "ours", "lean"):
                if name in over:
                    print(f"overhead ratio {name}/pfe: {over[name] / over['pfe']:.3f}")
    if "ours" in apps:  # prove the measured run really recorded every request
        _, registry = apps["ours"]
        assert registry is not None
        expected = 500 + args.rounds * (args.requests // args.threads) * args.threads
        labels = {
            "http_request_method": "GET",
            "http_route": "/item/<int:item_id>",
            "http_response_status_code": "200",
            "url_scheme": "http",
            "error_type": "",
        }
        got = registry.get_sample_value("http_server_request_duration_seconds_count", labels)
        print(f"ours recorded {got:.0f} of {expected} requests")
        if got != expected:
            print("MISMATCH: the extension lost requests", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
