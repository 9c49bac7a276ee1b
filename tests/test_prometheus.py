from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client import REGISTRY
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from flask_signal_metrics import prometheus
from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.labels import OVERFLOW
from flask_signal_metrics.prometheus import render

from .conftest import in_flight
from .conftest import make_app
from .conftest import requests_counted
from .conftest import total_requests
from .conftest import value
from .servers import lock_held


def _series(registry: CollectorRegistry) -> int:
    return sum(len(metric.samples) for metric in registry.collect())


def test_unknown_paths_add_no_series(client: object, registry: CollectorRegistry) -> None:
    from flask.testing import FlaskClient

    assert isinstance(client, FlaskClient)
    client.get("/first-unknown")
    before = _series(registry)
    for n in range(20_000):
        client.get(f"/scan/{n}/wp-admin.php?id={n}")
    assert _series(registry) == before
    assert requests_counted(registry, "", 404) == 20_001


def _many_routes(n: int) -> Flask:
    app = make_app()
    for i in range(n):
        app.add_url_rule(f"/r{i}", f"r{i}", lambda: "ok")
    return app


def test_cap_folds_new_label_sets_into_one_overflow_series(registry: CollectorRegistry) -> None:
    app = _many_routes(10)
    SignalMetrics(app, registry=registry, max_series=4)
    client = app.test_client()
    for i in range(10):
        client.get(f"/r{i}")
    for i in range(10):
        client.get(f"/r{i}")
    assert total_requests(registry) == 20  # nothing lost
    overflow = {name: OVERFLOW for name in
                ("http_request_method", "http_route", "http_response_status_code", "url_scheme",
                 "error_type")}  # fmt: skip
    assert value(registry, "http_server_request_duration_seconds_count", **overflow) == 12
    for name in ("http_server_request_duration_seconds", "http_server_request_body_size_bytes"):
        assert value(registry, "flask_signal_metrics_series_overflow_total", metric=name) == 12
    # 4 label sets, plus the overflow one
    durations = [m for m in registry.collect() if m.name == "http_server_request_duration_seconds"]
    assert len([s for s in durations[0].samples if s.name.endswith("_count")]) == 5
    assert in_flight(registry) == 0


def test_cap_applies_to_flash_categories(registry: CollectorRegistry) -> None:
    from flask import flash

    app = make_app()
    SignalMetrics(app, registry=registry, max_series=3)

    @app.get("/flash/<category>")
    def flash_view(category: str) -> str:
        flash("hi", category)  # a user-controlled category: a cardinality bomb
        return "ok"

    for n in range(10):
        app.test_client().get(f"/flash/c{n}")
    assert value(registry, "flask_flashed_messages_total", category=OVERFLOW) == 7
    assert (
        value(
            registry,
            "flask_signal_metrics_series_overflow_total",
            metric="flask_flashed_messages_total",
        )
        == 7
    )


def test_the_self_metrics_are_not_capped(registry: CollectorRegistry) -> None:
    """Their label values are the extension's own: a small cap never folds them."""
    SignalMetrics(make_app(), registry=registry, max_series=1)
    for name in (
        "flask_signal_metrics_receiver_errors_total",
        "flask_signal_metrics_otlp_dropped_total",
    ):
        assert value(registry, "flask_signal_metrics_series_overflow_total", metric=name) == 0
    errors = [m for m in registry.collect() if m.name == "flask_signal_metrics_receiver_errors"]
    assert len(errors[0].samples) >= 7  # one per signal, exported at 0


def test_a_label_value_no_encoding_takes_breaks_no_scrape(registry: CollectorRegistry) -> None:
    """A lone surrogate (a JSON "\\udcff", say) in a user-given label value."""
    from flask import flash
    from flask import request

    app = make_app()
    SignalMetrics(app, registry=registry)

    @app.post("/flash")
    def flash_view() -> str:
        flash("hi", request.get_json()["category"])
        return "ok"

    client = app.test_client()
    sent = b'{"category": "x\\udcff"}'
    assert client.post("/flash", data=sent, content_type="application/json").status_code == 200
    for accept in ("text/plain", "application/openmetrics-text"):
        scrape = client.get("/metrics", headers={"Accept": accept})
        assert scrape.status_code == 200
        assert 'flask_flashed_messages_total{category="x\ufffd"} 1.0' in scrape.text


def test_classic_naming_is_prometheus_flask_exporter_compatible(
    registry: CollectorRegistry,
) -> None:
    app = make_app()
    SignalMetrics(app, registry=registry, naming="classic")
    client = app.test_client()
    for path in ["/item/1", "/item/2", "/boom", "/nope"]:
        client.get(path)
    labels = {"method": "GET", "path": "/item/<int:item_id>", "status": "200"}
    assert value(registry, "flask_http_request_duration_seconds_count", **labels) == 2
    assert value(registry, "flask_http_request_total", method="GET", status="200") == 2
    assert value(registry, "flask_http_request_total", method="GET", status="404") == 1
    assert value(registry, "flask_http_request_exceptions_total", method="GET", status="500") == 1
    assert (
        value(
            registry,
            "flask_http_request_duration_seconds_count",
            method="GET",
            path="",
            status="404",
        )
        == 1
    )
    assert value(registry, "flask_exporter_info", version=_version()) == 1
    names = {m.name for m in registry.collect()}
    assert "http_server_request_duration_seconds" not in names
    assert {"http_server_active_requests", "http_server_request_body_size_bytes",
            "flask_request_exceptions", "flask_flashed_messages"} <= names  # fmt: skip


def _version() -> str:
    from flask_signal_metrics import __version__

    return __version__


def test_otel_naming_info(registry: CollectorRegistry, app: Flask) -> None:
    assert value(registry, "flask_signal_metrics_info", version=_version()) == 1


def test_buckets_and_static_labels(registry: CollectorRegistry) -> None:
    app = make_app()
    SignalMetrics(
        app, registry=registry, buckets=[0.5, 1.0], labels={"service": "shop", "env": "ci"}
    )
    app.test_client().get("/item/1")
    [duration] = [m for m in registry.collect() if m.name == "http_server_request_duration_seconds"]
    les = [s.labels["le"] for s in duration.samples if s.name.endswith("_bucket")]
    assert les == ["0.5", "1.0", "+Inf"]
    assert all(s.labels["service"] == "shop" and s.labels["env"] == "ci" for s in duration.samples)
    for metric in registry.collect():
        for sample in metric.samples:
            assert sample.labels.get("service") == "shop", sample


@pytest.mark.parametrize("naming", ["otel", "classic"])
def test_exposition_is_consistent(registry: CollectorRegistry, naming: str) -> None:
    app = make_app()
    SignalMetrics(app, registry=registry, naming=naming)
    client = app.test_client()
    for path in ["/item/1", "/boom", "/page", "/nope", "/stream"]:
        client.get(path).close()
    body, content_type = render([registry], [])
    assert content_type.startswith("text/plain; version=0.0.4")
    for family in text_string_to_metric_families(body.decode()):
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
        for sample in family.samples:
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            if sample.name.endswith("_bucket"):
                series.setdefault(key, {})[sample.labels["le"]] = sample.value
            elif sample.name.endswith("_count"):
                series.setdefault(key, {})["count"] = sample.value
        for buckets in series.values():
            les = [float(le) for le in buckets if le != "count"]
            counts = [buckets[le] for le in buckets if le != "count"]
            assert les == sorted(les) and math.isinf(les[-1])
            assert counts == sorted(counts)  # cumulative
            assert counts[-1] == buckets["count"]


@pytest.mark.parametrize(
    ("accepted", "expected"),
    [
        ([], "text/plain; version=0.0.4"),
        (["application/openmetrics-text; version=1.0.0"], "application/openmetrics-text"),
        (["application/openmetrics-text"], "application/openmetrics-text"),
        (["application/openmetrics-text; version=0.0.1"], "text/plain; version=0.0.4"),
        (["application/openmetrics-text; version=abc"], "text/plain; version=0.0.4"),
        (
            ["text/plain; version=0.0.4", "application/openmetrics-text"],
            "text/plain; version=0.0.4",
        ),
        (["*/*", "application/openmetrics-text"], "text/plain; version=0.0.4"),
        (["image/png"], "text/plain; version=0.0.4"),
        (["\xff\xfe", ";;;"], "text/plain; version=0.0.4"),
    ],
)
def test_render_negotiation(accepted: list[str], expected: str) -> None:
    registry = CollectorRegistry()
    body, content_type = render([registry], accepted)
    assert content_type.startswith(expected)
    if expected.startswith("application/openmetrics-text"):
        assert body.endswith(b"# EOF\n")


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
    if prometheus.multiprocess():
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
        cwd=Path(__file__).parent.parent,
        timeout=60,
        check=True,
    ).stdout


_DEFAULT_REGISTRY_RUN = """
import sys
from flask import Flask
from prometheus_client import Counter
from flask_signal_metrics import SignalMetrics

app = Flask("worker")
app.get("/hello")(lambda: "hi")
SignalMetrics(app, serve_default_registry=sys.argv[1] == "on")
Counter("user_jobs", "A user's module-level metric.").inc()
client = app.test_client()
client.get("/hello")
print(client.get("/metrics").text)
"""


@pytest.mark.parametrize("serve", ["on", "off"])
def test_serving_the_default_registry_is_an_option_in_multiprocess_mode_too(
    tmp_path: Path, serve: str
) -> None:
    text = in_a_worker(_DEFAULT_REGISTRY_RUN, tmp_path, serve)
    families = {metric.name for metric in text_string_to_metric_families(text)}
    assert "http_server_request_duration_seconds" in families
    assert "flask_signal_metrics_info" in families
    assert ("user_jobs" in families) is (serve == "on")


_MULTIPROCESS_RUN = """
import json, sys
from tests.test_prometheus import traffic_samples
samples = traffic_samples(sys.argv[1])
json.dump([[name, labels, value] for (name, labels), value in samples.items()], sys.stdout)
"""


@pytest.mark.parametrize("naming", ["otel", "classic"])
def test_multiprocess_backend_exposes_the_same(naming: str, tmp_path: Path) -> None:
    # The files a worker writes in multiprocess mode, summed by
    # prometheus_client's collector, and our in-process cells must expose the
    # same families, labels and values for the same traffic.
    out = in_a_worker(_MULTIPROCESS_RUN, tmp_path, naming)
    files = {(name, tuple(map(tuple, labels))): value for name, labels, value in json.loads(out)}
    ours = traffic_samples(naming)
    assert files.keys() == ours.keys()
    # Durations differ between two runs; their counts do not.
    timed = ("_duration_seconds_bucket",)
    assert {k: v for k, v in files.items() if not k[0].endswith(timed)} == {
        k: v for k, v in ours.items() if not k[0].endswith(timed)
    }


_FORKED_RUN = """
import os, sys
from prometheus_client import CollectorRegistry
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from tests.conftest import make_app
from flask_signal_metrics import SignalMetrics
app = make_app()
SignalMetrics(app)
client = app.test_client()
client.get("/item/1")
client.get("/page")
pid = os.fork()
if pid == 0:
    for _ in range(2):
        client.get("/item/1")
        client.get("/page")
    os._exit(0)
os.waitpid(pid, 0)
client.get("/item/1")
client.get("/page")
template = "flask_template_render_duration_seconds"
from flask_signal_metrics import prometheus
state = app.extensions["signal_metrics"]
print([r.count for r in prometheus.readings(state.owned) if r.family == template])
registry = CollectorRegistry()
MultiProcessCollector(registry)
labels = {"http_request_method": "GET", "http_route": "/item/<int:item_id>",
          "http_response_status_code": "200", "url_scheme": "http", "error_type": ""}
name = "http_server_request_duration_seconds"
for suffix in ("_count", "_bucket"):
    extra = {"le": "+Inf"} if suffix == "_bucket" else {}
    print(registry.get_sample_value(name + suffix, {**labels, **extra}))
print(registry.get_sample_value("http_server_active_requests", {"http_request_method": "GET",
                                                                "url_scheme": "http"}))
print(registry.get_sample_value(template + "_count", {"template": "__string__"}))
print(sorted(f.rsplit("_", 1)[0] for f in os.listdir(sys.argv[1]) if "_requests_" in f))
print(sorted({f.rsplit("_", 1)[0] for f in os.listdir(sys.argv[1]) if "_requests_" not in f}))
"""


def test_a_forked_worker_writes_a_file_of_its_own(tmp_path: Path) -> None:
    # A value written before the fork is the parent's: the child starts its
    # own file at 0 and the two add up, with no count lost or doubled.
    out = in_a_worker(_FORKED_RUN, tmp_path, str(tmp_path)).splitlines()
    # The template histogram too (made before the fork): this process's own
    # values for the OTLP bridge (2), everyone's on /metrics (4), written to
    # our files (no client histogram file).
    files = ["gauge_livesum_requests"] * 2 + ["histogram_requests"] * 2
    client_files = ["counter", "gauge_liveall", "gauge_max"]
    assert out == ["[2]", "4.0", "4.0", "0.0", "4.0", str(files), str(client_files)]


def _add(value: prometheus._Value, amount: float) -> None:
    # The line the package writes inline (see _Value).
    value.view[value.index] = value.number = value.number + amount


def test_values_written_into_the_map_are_what_the_client_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Request values are written straight into MmapedDict's map (its _m and
    # _positions): on the installed client they must read back as its own
    # writes do, also once the file grew past its first 1 MiB and was mapped anew.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    files = prometheus._ProcessFiles()
    keys = [f"{n:05d}" + "k" * 100 for n in range(12_000)]
    with files.lock:
        first = files.value("counter", keys[0]).view
        for n, key in enumerate(keys):
            _add(files.value("counter", key), n)
        _add(files.value("counter", keys[0]), 0.5)  # made before the file grew
        buckets, total = files.histogram((["le=1", "le=+Inf"], "sum"))
        _add(buckets[1], 1.0)
        _add(total, 2.5)
    assert files._direct is True  # checked on a scratch file at the first open
    # The values moved to a view of the grown file's new map; the old views
    # were let go (their maps and descriptors freed).
    counter_map = files._files["counter"]._m
    assert all(files.values[key].view is files._views["counter"] for key in keys)
    assert files._views["counter"].obj is counter_map and len(files._views) == 2
    with pytest.raises(ValueError, match="released"):
        t.cast(memoryview, first).obj  # noqa: B018
    files.forget()  # closes them
    (counters,) = tmp_path.glob("counter_requests_*.db")
    assert counters.stat().st_size > 1 << 20
    read = {k: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(counters))}  # type: ignore[no-untyped-call]
    assert read == {key: float(n) for n, key in enumerate(keys)} | {keys[0]: 0.5}
    (histogram,) = tmp_path.glob("histogram_requests_*.db")
    read = {k: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(histogram))}  # type: ignore[no-untyped-call]
    assert read == {"le=1": 0.0, "le=+Inf": 1.0, "sum": 2.5}
    assert list(tmp_path.glob("*.tmp")) == []  # the scratch file is gone


def test_a_fork_while_a_view_is_being_made_leaves_the_child_files_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A view of a map that no table holds (another thread was making it when
    # the process forked: a review's repro) keeps that map from closing; the
    # child still gets a new lock and tables, and records into its own files.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    files = prometheus._ProcessFiles()
    files.lock.acquire()  # held by the parent's thread, as at the fork
    _add(files.value("counter", "jobs"), 2.0)
    stray = prometheus._doubles(files._files["counter"])
    monkeypatch.setattr(os, "getpid", lambda: 1)  # the child's pid, for its files
    files.forget()  # what the child's fork handler does
    assert files.lock.acquire(timeout=1)
    try:
        assert files.values == {} and files._files == {}
        _add(files.value("counter", "jobs"), 1.0)
    finally:
        files.lock.release()
        files.forget()
        stray.release()
    monkeypatch.undo()
    read = {
        path.name: [(k, v) for k, v, _, _ in MmapedDict.read_all_values_from_file(str(path))]  # type: ignore[no-untyped-call]
        for path in tmp_path.glob("counter_requests_*.db")
    }
    parent = f"counter_requests_{os.getpid()}.db"
    assert read == {parent: [("jobs", 2.0)], "counter_requests_1.db": [("jobs", 1.0)]}


def _shifted(file: MmapedDict) -> memoryview[float]:
    # A layout with the timestamp first: the value lands where the client
    # reads the timestamp.
    return memoryview(file._m)[8:-8].cast("d")


def _moved(file: MmapedDict) -> memoryview[float]:
    raise AttributeError("'MmapedDict' object has no attribute '_m'")


@pytest.mark.parametrize("doubles", [_shifted, _moved], ids=["another-layout", "moved-attribute"])
def test_a_client_whose_map_is_not_as_expected_gets_its_own_writes(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    doubles: t.Callable[[MmapedDict], memoryview[float]],
) -> None:
    # A client release that moved MmapedDict's map or changed its layout:
    # the per-process check sees it, and every value goes through write_value.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(prometheus, "_doubles", doubles)
    assert not prometheus._writes_directly(str(tmp_path))
    files = prometheus._ProcessFiles()
    with files.lock:
        jobs = files.value("counter", "jobs")
        _add(jobs, 2.0)
        _add(jobs, 1.0)
        buckets, total = files.histogram((["le=1", "le=+Inf"], "sum"))
        _add(buckets[1], 1.0)
        _add(total, 2.5)
    assert files._direct is False
    files.forget()
    read: dict[str, float] = {}
    for path in sorted(tmp_path.glob("*_requests_*.db")):
        read |= {k: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(path))}  # type: ignore[no-untyped-call]
    assert read == {"jobs": 3.0, "le=1": 0.0, "le=+Inf": 1.0, "sum": 2.5}
    assert list(tmp_path.glob("*.tmp")) == []


def test_the_scratch_file_is_removed_when_the_check_fails_early(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class FailingMap(MmapedDict):
        """Made its file, then failed (as when mmap itself fails)."""

        def __init__(self, path: str) -> None:
            super().__init__(path)  # type: ignore[no-untyped-call]
            self.close()  # type: ignore[no-untyped-call]
            raise OSError("mmap failed")

    monkeypatch.setattr(prometheus, "MmapedDict", FailingMap)
    assert not prometheus._writes_directly(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_file_still_empty_breaks_no_scrape_and_is_compacted_away(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A process opens its file empty, then sizes it: a scrape in between, or
    # a worker killed in between, must not fail the scrape or the compaction.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    key = mmap_key("jobs", "jobs_total", ["queue"], ["mail"], "Jobs.")
    written = MmapedDict(str(tmp_path / "counter_100.db"))  # type: ignore[no-untyped-call]
    written.write_value(key, 3.0, 0.0)  # type: ignore[no-untyped-call]
    written.close()  # type: ignore[no-untyped-call]
    (tmp_path / "counter_200.db").touch()  # empty, as between open and sizing
    (family,) = prometheus.read_multiprocess(str(tmp_path))
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("jobs_total", {"queue": "mail"}, 3.0)
    ]
    assert prometheus.compact(200) == 0
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_100.db"]


#: (duration, request size, response size, sampled span ids) recorded in order;
#: values on bucket bounds, unknown sizes (None) and two exemplars in one bucket.
_OBSERVATIONS = [
    (0.1, 0, 10, None),
    (0.3, None, 11, (1, 2)),
    (0.05, 10, None, None),
    (5.0, 1000, 100, (3, 4)),
    (0.5, 11, 0, None),
    (0.2, 0, 10, (5, 6)),
]


@pytest.mark.parametrize("fold_at", [0, 3, 256], ids=["each", "batches", "at-scrape"])
def test_folded_buckets_are_exact(monkeypatch: pytest.MonkeyPatch, fold_at: int) -> None:
    """Observations are folded column by column; the buckets come out as one by one."""
    monkeypatch.setattr(prometheus, "_FOLD_AT", fold_at)
    stats = prometheus.RequestStats(
        naming="otel",
        buckets=[0.1, 0.5, 1.0],
        size_buckets=[10, 100],
        static_labels=(),
        max_series=10,
        overflowed=(),
    )
    key = ("GET", "/item/<int:item_id>", "200", "http", "")
    for duration, request_size, response_size, exemplar in _OBSERVATIONS * 50:
        stats.record(key, None, duration, request_size, response_size, exemplar)
    families = {family.name: family for family in stats.collect()}

    def buckets(name: str) -> list[tuple[str, float]]:
        samples = families[name].samples
        return [(s.labels["le"], s.value) for s in samples if s.name.endswith("_bucket")]

    def total(name: str) -> float:
        return next(s.value for s in families[name].samples if s.name.endswith("_sum"))

    seconds = "http_server_request_duration_seconds"
    assert buckets(seconds) == [("0.1", 100), ("0.5", 250), ("1.0", 250), ("+Inf", 300)]
    assert total(seconds) == pytest.approx(50 * 6.15)
    assert buckets("http_server_request_body_size_bytes") == [
        ("10.0", 150),
        ("100.0", 200),
        ("+Inf", 250),
    ]
    assert total("http_server_request_body_size_bytes") == 50 * 1021
    assert buckets("http_server_response_body_size_bytes") == [
        ("10.0", 150),
        ("100.0", 250),
        ("+Inf", 250),
    ]
    exemplars = {
        s.labels["le"]: (s.exemplar.labels["trace_id"], s.exemplar.value)
        for s in families[seconds].samples
        if s.exemplar is not None
    }
    # The latest of each bucket: (5, 6) came after (1, 2) in (0.1, 0.5].
    assert exemplars == {"0.5": (f"{5:032x}", 0.2), "+Inf": (f"{3:032x}", 5.0)}


def test_a_file_histogram_refuses_what_the_clients_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Observing the labelled parent, or the wrong number of label values, is
    # an error before anything is written: an empty key in a file would fail
    # every later scrape of the directory.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    histogram = prometheus.FileHistogram(
        "renders", "Renders.", ["template"], [1.0], CollectorRegistry()
    )
    with pytest.raises(ValueError, match="has labels"):
        histogram.observe(0.5)
    with pytest.raises(ValueError, match="1 label values expected"):
        histogram.labels("a", "b")
    assert list(tmp_path.iterdir()) == []


_DECLARED_RUN = """
import os, sys
from blinker import Namespace
from prometheus_client import CollectorRegistry
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from tests.conftest import make_app
from flask_signal_metrics import SignalMetrics
signals = Namespace()
started, finished = signals.signal("job-started"), signals.signal("job-finished")
ext = SignalMetrics(make_app())
key = lambda sender, **kw: kw["job_id"]
ext.time(started, finished, key=key, name="jobs_seconds", buckets=[0.5, 1.0])
ext.time(started, finished, key=key, name="jobs_by_queue_seconds", buckets=[0.5, 1.0],
         labels={"queue": lambda sender, **kw: kw["queue"]})
for n in range(3):
    started.send("worker", job_id=n, queue="mail")
    finished.send("worker", job_id=n, queue="mail")
registry = CollectorRegistry()
MultiProcessCollector(registry)
print(registry.get_sample_value("jobs_seconds_bucket", {"le": "0.5"}))
print(registry.get_sample_value("jobs_by_queue_seconds_count", {"queue": "mail"}))
print(sorted({f.rsplit("_", 1)[0] for f in os.listdir(sys.argv[1])}))
"""


def test_declared_histograms_in_a_worker_are_written_to_its_files(tmp_path: Path) -> None:
    # Time between the app's own signals, unlabelled and labelled, in
    # multiprocess mode: in our files (no client histogram file), all counted.
    out = in_a_worker(_DECLARED_RUN, tmp_path, str(tmp_path)).splitlines()
    files = ["counter", "gauge_liveall", "gauge_max", "histogram_requests"]
    assert out == ["3.0", "3.0", str(files)]


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [("min", [5.0, 7.0], 5.0), ("max", [-3.0, -8.0], -3.0), ("sum", [2.0, 3.0], 5.0)],
)
def test_compaction_merges_gauges_by_their_mode(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    mode: str,
    values: list[float],
    expected: float,
) -> None:
    # Two dead processes folded one after the other: the first one's value
    # is taken as it is (not merged with the 0 a new key reads as).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    key = mmap_key("probe", "probe", [], [], "A probe.")
    for pid, number in zip((100, 200), values, strict=True):
        written = MmapedDict(str(tmp_path / f"gauge_{mode}_{pid}.db"))  # type: ignore[no-untyped-call]
        written.write_value(key, number, 0.0)  # type: ignore[no-untyped-call]
        written.close()  # type: ignore[no-untyped-call]
    before = prometheus.read_multiprocess(str(tmp_path))
    assert [s.value for f in before for s in f.samples] == [expected]
    assert prometheus.compact(100) == 1
    assert prometheus.compact(200) == 1
    assert [p.name for p in tmp_path.glob("*.db")] == [f"gauge_{mode}_compacted.db"]
    after = prometheus.read_multiprocess(str(tmp_path))
    assert [s.value for f in after for s in f.samples] == [expected]


def _write_counter(directory: Path, pid: int, number: float) -> None:
    key = mmap_key("jobs", "jobs_total", [], [], "Jobs.")
    written = MmapedDict(str(directory / f"counter_{pid}.db"))  # type: ignore[no-untyped-call]
    written.write_value(key, number, 0.0)  # type: ignore[no-untyped-call]
    written.close()  # type: ignore[no-untyped-call]


def _jobs(directory: Path) -> list[float]:
    return [s.value for f in prometheus.read_multiprocess(str(directory)) for s in f.samples]


def test_the_lock_file_is_this_users_only_whatever_the_umask(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another user who can open the lock file can hold it: every scrape stops.
    monkeypatch.setattr(prometheus, "multiprocess", lambda: True)
    old = os.umask(0)
    try:
        prometheus.exposed([])
    finally:
        os.umask(old)
    lock = multiproc_dir / prometheus.LOCK_FILE
    assert oct(lock.stat().st_mode & 0o777) == oct(0o600)


def test_a_lock_file_that_is_a_link_is_never_followed(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(prometheus, "multiprocess", lambda: True)
    target = tmp_path / "someone-elses-file"
    target.write_text("theirs")
    (multiproc_dir / prometheus.LOCK_FILE).symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link; remove it"):
        prometheus.check_directory()
    with pytest.raises(prometheus.LockUnavailable) as refused:
        prometheus.exposed([])
    assert refused.value.reason == "lock_error"  # the label its 503 is counted under
    assert target.read_text() == "theirs" and oct(target.stat().st_mode & 0o777) != oct(0o600)


@pytest.mark.parametrize("mode", ["exclusive", "shared"])
def test_a_held_lock_refuses_a_scrape_within_its_timeout(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(prometheus, "multiprocess", lambda: True)
    _write_counter(multiproc_dir, 100, 3.0)
    with lock_held(multiproc_dir, mode):
        if mode == "shared":  # scrapes share the lock with each other
            assert _jobs_exposed() == [3.0]
        else:
            started = time.monotonic()
            with pytest.raises(
                prometheus.LockUnavailable, match=r"held elsewhere for 0\.3 s"
            ) as refused:
                prometheus.exposed([], lock_timeout=0.3)
            assert 0.3 <= time.monotonic() - started < 5
            assert refused.value.reason == "lock_timeout"
    assert _jobs_exposed() == [3.0]


def _jobs_exposed() -> list[float]:
    return [
        s.value
        for c in prometheus.exposed([REGISTRY], lock_timeout=5)
        for f in c.collect()
        for s in f.samples
    ]


def test_a_compaction_never_waits_for_a_held_lock(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It runs in the server's master, which replaces dead workers only once it
    # returns: left for the next worker's exit, never waited for.
    monkeypatch.setattr(prometheus, "_UNCOMPACTED", set())
    _write_counter(multiproc_dir, 100, 3.0)
    _write_counter(multiproc_dir, 200, 4.0)
    with lock_held(multiproc_dir, "shared"):  # a shared lock is enough to keep it out
        started = time.monotonic()
        prometheus.process_died(100)
        assert time.monotonic() - started < 2
    assert sorted(p.name for p in multiproc_dir.glob("*.db")) == [
        "counter_100.db",
        "counter_200.db",
    ]
    assert _jobs(multiproc_dir) == [7.0]  # counted meanwhile, as they are
    prometheus.process_died(200)  # the next exit folds both
    assert [p.name for p in multiproc_dir.glob("*.db")] == ["counter_compacted.db"]
    assert _jobs(multiproc_dir) == [7.0]


@pytest.mark.parametrize(
    ("mode", "refused"),
    [
        (0o777, "every user can write"),
        (0o1777, "every user can write"),  # sticky, as /tmp: others can still plant files
        (0o702, "every user can write"),
        (0o770, None),  # its group: a warning
        (0o700, None),
    ],
)
def test_a_directory_other_users_can_write_is_refused_at_init(
    multiproc_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mode: int,
    refused: str | None,
) -> None:
    multiproc_dir.chmod(mode)
    monkeypatch.setattr(prometheus, "multiprocess", lambda: True)
    app = make_app()
    if refused is None:
        SignalMetrics(app, registry=CollectorRegistry())
        assert ("group" in caplog.text) is bool(mode & 0o020)
        return
    with pytest.raises(ValueError) as info:
        SignalMetrics(app, registry=CollectorRegistry())
    said = str(info.value)
    assert "PROMETHEUS_MULTIPROC_DIR" in said and refused in said and "chmod 700" in said
    assert "signal_metrics" not in app.extensions


def test_a_directory_another_user_owns_is_refused(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() == 0:
        os.chown(multiproc_dir, 65534, -1)  # nobody's
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(ValueError, match=r"PROMETHEUS_MULTIPROC_DIR .* owned by uid"):
        prometheus.check_directory()


def test_a_missing_directory_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="mkdir -m 700"):
        prometheus.check_directory()


#: Label values that need escaping, or that the render's own writing must leave to the client.
_ODD_ROUTES = ['/q"uote/<x>', "/back\\slash/<x>", "/new\nline/<x>", "/\ue000/<x>", "/ünï/<x>"]

#: What Prometheus 3 asks for (OpenMetrics with UTF-8 names), and some versions.
_FORMATS = [
    [],
    ["text/plain; version=0.0.4"],
    ["application/openmetrics-text"],
    ["application/openmetrics-text; version=1.0.0; escaping=allow-utf-8"],
    ["application/openmetrics-text; version=1.0.0; escaping=underscores"],
    ["application/openmetrics-text; version=1.1.0"],
    ["application/openmetrics-text; version=1.2.0"],
    ["application/openmetrics-text; version=1.3.0"],
]


def _odd_app(registry: CollectorRegistry, naming: str) -> Flask:
    app = make_app()
    for n, rule in enumerate(_ODD_ROUTES):
        app.add_url_rule(rule, f"odd{n}", lambda x: "ok")
    SignalMetrics(app, registry=registry, naming=naming, labels={"service": 'sh"o\\p\n'})
    return app


def _traffic(app: Flask, paths: list[str]) -> None:
    client = app.test_client()
    for path in paths:
        client.get(path).close()
    client.post("/echo", data=b"x" * 700)


@pytest.mark.parametrize("naming", ["otel", "classic"])
def test_render_writes_what_the_clients_encoder_writes(
    registry: CollectorRegistry, naming: str
) -> None:
    from prometheus_client.exposition import choose_encoder

    app = _odd_app(registry, naming)
    state = app.extensions["signal_metrics"]
    requests = state.metrics.requests
    key = ("GET", "/item/<int:item_id>", "200", "http", "")
    first = ["/item/1", "/boom", "/nope", "/stream"]
    for paths in (first, ["/page", *(rule.replace("<x>", "1") for rule in _ODD_ROUTES)]):
        _traffic(app, paths)
        # Exemplars in two buckets, one with the time of a whole second.
        requests.record(key, None, 0.003, 5, 7, exemplar=(2**127 + 5, 2**63 + 9))
        requests.record(key, None, 7.0, None, None, exemplar=(1, 2))
        kept = requests._cells[key].pending[-1][3]
        requests._cells[key].pending[-1] = (7.0, None, None, (*kept[:3], 1_700_000_000.0))
        for accepted in _FORMATS:
            encoder, content_type = choose_encoder(", ".join(accepted))
            body, rendered_type = render([registry], accepted)
            assert rendered_type == content_type
            assert body == encoder(registry)
    assert len(requests._formats) <= prometheus._MAX_FORMATS  # the others: the client's
    text = render([registry], ["application/openmetrics-text"])[0].decode()
    assert "trace_id=" in text
    assert 'http_route="/\ue000/<x>"' in text and 'http_route="/q\\"uote/<x>"' in text


def test_render_writes_the_request_series_itself(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not through the client's samples, which cost the most in a large exposition."""
    from prometheus_client.metrics_core import HistogramMetricFamily

    app = make_app()
    SignalMetrics(app, registry=registry)
    _traffic(app, ["/item/1", "/nope", "/boom"])
    made: list[str] = []
    add_metric = HistogramMetricFamily.add_metric

    def counted(family: HistogramMetricFamily, *args: t.Any, **kw: t.Any) -> None:
        made.append(family.name)
        add_metric(family, *args, **kw)

    formats: list[list[str]] = [[], ["application/openmetrics-text"]]
    for accepted in formats:
        render([registry], accepted)  # the first learns how the client writes the format
    monkeypatch.setattr(HistogramMetricFamily, "add_metric", counted)
    _traffic(app, ["/item/2", "/page"])
    for accepted in formats:
        body, _ = render([registry], accepted)
        assert b'http_server_request_duration_seconds_count{error_type="ValueError"' in body
        assert b'http_server_request_body_size_bytes_count{error_type=""' in body
    assert [name for name in made if name.startswith("http_server")] == []
