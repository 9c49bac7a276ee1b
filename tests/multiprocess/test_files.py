from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from flask_signal_metrics.metrics.names import HistogramSpec
from flask_signal_metrics.multiprocess.files import FileHistogram

from .conftest import in_a_worker
from .conftest import traffic_samples

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
from tests.multiprocess.conftest import traffic_samples
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
from flask_signal_metrics.metrics.readback import readings
state = app.extensions["signal_metrics"]
print([r.count for r in readings(state.owned) if r.family == template])
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


def test_a_file_histogram_refuses_what_the_clients_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Observing the labelled parent, or the wrong number of label values, is
    # an error before anything is written: an empty key in a file would fail
    # every later scrape of the directory.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    histogram = FileHistogram(
        HistogramSpec("renders", "Renders.", ("template",), (1.0,)), CollectorRegistry()
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


_LATE_EXPORT_RUN = """
import sys
from tests.conftest import make_app
from flask_signal_metrics import SignalMetrics
app = make_app()
ext = SignalMetrics(app, naming="classic", export_defaults=False)
client = app.test_client()
client.get("/item/1")
before = client.get("/metrics").get_data(as_text=True)
ext.export_defaults(app)
client.get("/item/1")
after = client.get("/metrics").get_data(as_text=True)
counted = 'flask_http_request_total{method="GET",status="200"} 1.0'
print(before.count("flask_http_request_total{"), after.count(counted))
"""


def test_request_metrics_not_exported_are_not_in_the_files(tmp_path: Path) -> None:
    # Every scrape sums the directory's files: unexported metrics must not be written there.
    assert in_a_worker(_LATE_EXPORT_RUN, tmp_path).split() == ["0", "1"]


_ACTIVE_RUN = """
import sys
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from tests.conftest import make_app
from flask_signal_metrics import SignalMetrics

reader = InMemoryMetricReader()
provider = MeterProvider([reader], shutdown_on_exit=False)
outer, inner = make_app("outer"), make_app("inner")
for app in (outer, inner)[: int(sys.argv[1])]:
    SignalMetrics(app, tracing=False, meter_provider=provider)

def active():
    data = reader.get_metrics_data()
    return [
        (dict(p.attributes), p.value)
        for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
        if m.name == "http.server.active_requests" for p in m.data.data_points
    ]

seen = []
inner.get("/now")(lambda: seen.append(active()) or "ok")
outer.get("/nested")(lambda: inner.test_client().get("/now").text)
outer.test_client().get("/nested")
print(seen, active())
"""


@pytest.mark.parametrize(("apps", "in_flight"), [(1, 1), (2, 2)])
def test_active_requests_are_this_workers_in_flight_from_its_file(
    tmp_path: Path, apps: int, in_flight: int
) -> None:
    # The OTel meters observe the worker's own in-flight value (its livesum
    # file), once: the apps of one worker share it.
    out = in_a_worker(_ACTIVE_RUN, tmp_path, str(apps)).strip()
    get = "{'http.request.method': 'GET', 'url.scheme': 'http'}"
    assert out == f"[[({get}, {in_flight})]] [({get}, 0)]"


_FORKED_COLLECTION_RUN = """
import os, sys, threading
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from tests.conftest import make_app
from flask_signal_metrics import SignalMetrics

reader = InMemoryMetricReader()
app = make_app()
SignalMetrics(app, tracing=False, meter_provider=MeterProvider([reader], shutdown_on_exit=False))
app.test_client().get("/item/1")
pid = os.fork()
if pid == 0:  # a helper that records nothing, and whose reader collects
    reader.get_metrics_data()
    mine = sorted(f for f in os.listdir(sys.argv[1]) if f.endswith(f"_{os.getpid()}.db"))
    print(mine, sorted(t.name for t in threading.enumerate() if t.name.startswith("flask-")))
    sys.stdout.flush()
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_collection_in_a_forked_child_makes_no_files_and_no_thread(tmp_path: Path) -> None:
    # Only a value recorded opens a process's files (and starts its workers' thread).
    assert in_a_worker(_FORKED_COLLECTION_RUN, tmp_path, str(tmp_path)).strip() == "[] []"
