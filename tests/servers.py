"""Real servers for the tests: started on 127.0.0.1, free ports, bounded in time."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import typing as t
import urllib.parse
import urllib.request
from pathlib import Path

from .conftest import free_port
from .conftest import ROOT


def wait_for(url: str, seconds: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; fail after ``seconds`` or if ``process`` dies."""
    deadline = time.monotonic() + seconds
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {seconds} s")
        time.sleep(0.1)


@contextlib.contextmanager
def running(
    args: list[str], log: Path, cwd: Path = ROOT, env: t.Mapping[str, str] | None = None
) -> t.Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` with output to ``log``; terminate (then kill) on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=environ)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=15)


@contextlib.contextmanager
def gunicorn(
    app: str,
    tmp: Path,
    workers: int = 1,
    extra: t.Sequence[str] = (),
    env: t.Mapping[str, str] | None = None,
) -> t.Iterator[str]:
    """Serve ``app`` under gunicorn; yields its base URL."""
    port = free_port()
    args = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--worker-class", "gthread", "--threads", "4",
        "--graceful-timeout", "5", *extra, app,
    ]  # fmt: skip
    with running(args, tmp / "gunicorn.log", env=env) as process:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/healthz", 60, process)
        yield base


class Shop(t.NamedTuple):
    """The example app under gunicorn: its base URL, port and master process."""

    base: str
    port: int
    master: subprocess.Popen[bytes]


@contextlib.contextmanager
def example_shop(
    tmp: Path, *options: str, env: t.Mapping[str, str] | None = None
) -> t.Iterator[Shop]:
    """``examples.app:app`` under gunicorn with examples/gunicorn.conf.py, once it answers.

    Multiprocess mode in ``tmp/multiproc``; ``options`` go to gunicorn, ``env``
    (WEB_CONCURRENCY, WORKER_CLASS, METRICS_PORT, ...) to its environment.
    """
    port = free_port()
    environment = {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "multiproc"),
        "BIND": f"127.0.0.1:{port}",
        **(env or {}),
    }
    args = [
        sys.executable, "-m", "gunicorn", "-c", str(ROOT / "examples" / "gunicorn.conf.py"),
        *options, "examples.app:app",
    ]  # fmt: skip
    with running(args, tmp / "gunicorn.log", env=environment) as master:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/healthz", 60, master)
        yield Shop(base, port, master)


@contextlib.contextmanager
def prometheus(
    binary: str,
    targets: t.Sequence[str] | t.Mapping[str, str],
    tmp: Path,
    rule_files: t.Sequence[str] = (),
) -> t.Iterator[str]:
    """Run Debian's Prometheus scraping ``targets`` (host:port) every second.

    :param targets: host:port of job ``shop``, or job name -> host:port.
    """
    port = free_port()
    config = tmp / "prometheus.yml"
    jobs = targets if isinstance(targets, t.Mapping) else {"shop": targets}
    scrape = [
        {
            "job_name": job,
            "static_configs": [{"targets": [hosts] if isinstance(hosts, str) else hosts}],
        }
        for job, hosts in jobs.items()
    ]
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": list(rule_files),
                "scrape_configs": scrape,
            }
        )
    )
    args = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
    ]
    with running(args, tmp / "prometheus.log") as process:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/-/ready", 60, process)
        yield base


def query(base: str, promql: str) -> list[dict[str, t.Any]]:
    """An instant query through the HTTP API; returns the result vector."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        payload = json.load(response)
    assert payload["status"] == "success", payload
    return t.cast(list[dict[str, t.Any]], payload["data"]["result"])


def wait_for_value(base: str, promql: str, expected: float, seconds: float) -> float:
    """Poll ``promql`` (a single-value query) until it equals ``expected``."""
    deadline = time.monotonic() + seconds
    got = float("nan")
    while time.monotonic() < deadline:
        result = query(base, promql)
        if result:
            got = float(result[0]["value"][1])
            if got == expected:
                return got
        time.sleep(0.5)
    return got


# -- rotel: a real OTLP collector ---------------------------------------------------


class Rotel(t.NamedTuple):
    http: str  # base URL of the OTLP/HTTP receiver
    grpc: str  # URL of the OTLP/gRPC receiver
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def spans(self) -> list[dict[str, t.Any]]:
        return parse_rotel(self.text())[0]

    def points(self) -> list[dict[str, t.Any]]:
        return parse_rotel(self.text())[1]

    def wait(self, predicate: t.Callable[[Rotel], bool], seconds: float, what: str) -> None:
        """Poll what rotel printed until ``predicate`` holds; fail after ``seconds``."""
        deadline = time.monotonic() + seconds
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"rotel did not receive {what} within {seconds} s")
            time.sleep(0.2)


def rotel_binary() -> str:
    import rotel

    return str(Path(rotel.__file__).parent / "rotel-agent")


@contextlib.contextmanager
def rotel(tmp: Path, extra: t.Sequence[str] = ()) -> t.Iterator[Rotel]:
    """rotel-agent with OTLP HTTP and gRPC receivers, printing what it receives."""
    http_port, grpc_port = free_port(), free_port()
    args = [
        rotel_binary(), "start",
        "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
        "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
        "--exporter", "blackhole",
        "--debug-log", "traces", "--debug-log", "metrics",
        "--debug-log-verbosity", "detailed",
        "--pid-file", str(tmp / "rotel.pid"), "--log-file", str(tmp / "rotel-agent.log"),
        *extra,
    ]  # fmt: skip
    log = tmp / "rotel.out"
    with running(args, log, env={"NO_COLOR": "1"}) as process:
        collector = Rotel(f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{grpc_port}", log)
        collector.wait(lambda c: "Starting Rotel" in c.text(), 30, "its start")
        if process.poll() is not None:
            raise RuntimeError(f"rotel exited: {collector.text()}")
        yield collector


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_VALUE = re.compile(r"^(Str|Int|Double|Bool)\((.*)\)$")


def _attribute(text: str) -> tuple[str, t.Any]:
    key, _, raw = text.partition(": ")
    match = _VALUE.match(raw)
    if match is None:
        return key, raw
    kind, found = match.groups()
    if kind == "Int":
        return key, int(found)
    if kind == "Double":
        return key, float(found)
    if kind == "Bool":
        return key, found == "true"
    return key, found


def parse_rotel(text: str) -> tuple[list[dict[str, t.Any]], list[dict[str, t.Any]]]:
    """Spans and metric data points from rotel's detailed debug output.

    Each span: name, kind, trace_id, parent_id, id, status, attributes,
    resource. Each point: metric, type, unit, attributes, resource, its
    numbers (count, sum, value, bucket_counts) and exemplars (dicts with
    "Trace ID", "Span ID", "Value").
    """
    spans: list[dict[str, t.Any]] = []
    points: list[dict[str, t.Any]] = []
    resource: dict[str, t.Any] = {}
    current: dict[str, t.Any] | None = None
    metric: dict[str, t.Any] = {}
    target: dict[str, t.Any] | None = None  # where "-> key: value" lines go
    for raw in _ANSI.sub("", text).splitlines():
        line = raw.strip()
        if line.startswith(("ResourceSpans #", "ResourceMetrics #")):
            resource, current, target = {}, None, None
        elif line == "Resource attributes:":
            target = resource
        elif line.startswith("Span #"):
            current = {"attributes": {}, "resource": resource, "events": []}
            spans.append(current)
            target = None
        elif current is not None and " : " in line and target is None and "attributes" in current:
            key, _, found = line.partition(" : ")
            current[key.strip().lower().replace(" ", "_")] = found.strip()
        elif line == "Attributes:" and current is not None:
            target = current["attributes"]
        elif line.startswith("Metric #"):
            metric, current, target = {}, None, None
        elif line == "Descriptor:":
            target = metric
        elif re.match(r"^(Histogram|Number)DataPoints #", line):
            current = {"metric": metric.get("Name"), "unit": metric.get("Unit"),
                       "type": metric.get("DataType"), "attributes": {},
                       "resource": resource, "bucket_counts": []}  # fmt: skip
            points.append(current)
            target = None
        elif line == "Data point attributes:" and current is not None:
            target = current["attributes"]
        elif line.startswith("Exemplar #") and current is not None:
            target = {}
            current.setdefault("exemplars", []).append(target)
        elif line.startswith("-> ") and target is not None:
            key, found = _attribute(line[3:])
            target[key] = found
        elif current is not None and "metric" in current:
            key, _, found = line.partition(": ")
            if key == "Count":
                current["count"] = int(found)
            elif key == "Sum":
                current["sum"] = float(found)
            elif key == "Value":
                current["value"] = float(found)
            elif key.startswith("Buckets #"):
                current["bucket_counts"].append(int(found))
    return spans, points


_HOLD_LOCK = """
import fcntl, sys
lock = open(sys.argv[1], "rb")
fcntl.flock(lock, fcntl.LOCK_EX if sys.argv[2] == "exclusive" else fcntl.LOCK_SH)
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@contextlib.contextmanager
def lock_held(directory: Path, mode: str = "exclusive") -> t.Iterator[None]:
    """Another process holds the multiprocess directory's lock until the block ends.

    The worst another user could do with a lock file they can open: take it
    and never let go (read-only is enough for ``flock``).
    """
    path = directory / ".flask-signal-metrics.lock"
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        yield
    finally:
        holder.kill()
        holder.wait(timeout=15)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
