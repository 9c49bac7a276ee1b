"""Real servers for the tests: started on 127.0.0.1, free ports, bounded in time."""

from __future__ import annotations

import contextlib
import json
import os
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
