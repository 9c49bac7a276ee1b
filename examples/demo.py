"""Run the demo: the shop under gunicorn on 127.0.0.1, some traffic, and where to look.

    python -m examples.demo [--port 8000]

Spans and OTLP metrics go to a local OTLP collector (rotel, from the test
tools), which writes what it receives to .cache/demo/rotel.out.

Serves until interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from examples import traffic

ROOT = Path(__file__).resolve().parent.parent


def _start_collector(log: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    """rotel on 127.0.0.1, printing what it receives; (None, "") if not installed."""
    try:
        import rotel
    except ImportError:
        return None, ""
    http = _free_port(4318)
    grpc = _free_port(4317 if http != 4317 else 0)
    log.parent.mkdir(parents=True, exist_ok=True)
    args = [
        str(Path(rotel.__file__).parent / "rotel-agent"), "start",
        "--otlp-http-endpoint", f"127.0.0.1:{http}", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc}",
        "--exporter", "blackhole", "--debug-log", "traces", "--debug-log", "metrics",
        "--debug-log-verbosity", "detailed",
        "--pid-file", str(log.parent / "rotel.pid"), "--log-file", str(log.parent / "rotel.log"),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{http}"


def _spans_received(log: Path) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in log.read_text(errors="replace").splitlines()
        if line.strip().startswith("Name ") and ":" in line
    ]


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _wait_until_up(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                response.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C and a plain kill both stop the shop and the collector, also when
    # the demo was started from a background job of a shell script, which
    # starts it with SIGINT ignored (Python then keeps it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description="Run the flask-signal-metrics demo.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "8000")))
    parser.add_argument("--rounds", type=int, default=3, help="rounds of demo traffic")
    args = parser.parse_args()
    port = _free_port(args.port)
    base = f"http://127.0.0.1:{port}"
    rotel_log = ROOT / ".cache" / "demo" / "rotel.out"
    collector, otlp = _start_collector(rotel_log)
    env = dict(os.environ)
    if otlp:
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp,
            OTEL_SERVICE_NAME="demo-shop",
            OTEL_BSP_SCHEDULE_DELAY="500",
            OTEL_METRIC_EXPORT_INTERVAL="5000",
        )
    # One worker process (threads for concurrency): several worker processes
    # need prometheus_client's multiprocess mode, which is a set-up of its own.
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "--log-level",
            "warning",
            "examples.app:app",
        ],
        env=env,
    )
    try:
        _wait_until_up(base + "/healthz", 30)
        counts = traffic.drive(base, rounds=args.rounds)
        print(f"\nSent {sum(counts.values())} measured requests (and a few excluded ones).")
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            body = response.read().decode()
        print("A few lines of what Prometheus will scrape:\n")
        for line in body.splitlines():
            if line.startswith("http_server_request_duration_seconds_count"):
                print("  " + line)
        with urllib.request.urlopen(
            urllib.request.Request(
                base + "/metrics", headers={"Accept": "application/openmetrics-text"}
            ),
            timeout=5,
        ) as response:
            exemplars = [x for x in response.read().decode().splitlines() if " # {" in x]
        if exemplars:
            print("\nAn exemplar (OpenMetrics): the trace of a request in that bucket:\n")
            print("  " + exemplars[0])
        if collector is not None:
            time.sleep(1.5)  # the batch processor sends every 0.5 s
            names = _spans_received(rotel_log)
            print(f"\nThe OTLP collector (rotel) received {len(names)} spans, e.g.:")
            for name in sorted(set(names))[:6]:
                print(f"  {name}")
            print(f"What it received, attributes and all: {rotel_log}")
        print(f"\nThe demo shop:  {base}/")
        print(f"Its metrics:    {base}/metrics")
        print(f"OpenMetrics:    curl -H 'Accept: application/openmetrics-text' {base}/metrics")
        print("Serving until you press Ctrl-C.")
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for process in (server, collector):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
