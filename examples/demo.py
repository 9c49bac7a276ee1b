"""Run the demo: the shop under gunicorn on 127.0.0.1, some traffic, and where to look.

    python -m examples.demo [--port 8000]

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

from examples import traffic


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


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the flask-signal-metrics demo.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "8000")))
    parser.add_argument("--rounds", type=int, default=3, help="rounds of demo traffic")
    args = parser.parse_args()
    port = _free_port(args.port)
    base = f"http://127.0.0.1:{port}"
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
        ]
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
        print(f"\nThe demo shop:  {base}/")
        print(f"Its metrics:    {base}/metrics")
        print(f"OpenMetrics:    curl -H 'Accept: application/openmetrics-text' {base}/metrics")
        print("Serving until you press Ctrl-C.")
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
