"""Several gunicorn workers: every scrape sums them all, exactly, through kills and recycling."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import real_binary
from .conftest import ROOT
from .servers import example_shop
from .servers import lock_held
from .servers import prometheus
from .servers import query
from .servers import wait_for_value

pytestmark = pytest.mark.real

ROUTE = "/items/<int:item_id>"


def _workers(master: int) -> list[int]:
    path = Path(f"/proc/{master}/task/{master}/children")
    return [int(pid) for pid in path.read_text().split()]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, http.client.HTTPException):
        return 0  # the connection died with its worker: not a completed request


def _counts(base: str) -> tuple[float, float]:
    """(requests counted for ROUTE 200, in flight) from one scrape of /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    count = in_flight = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "http_server_request_duration_seconds_count"
                and sample.labels.get("http_route") == ROUTE
                and sample.labels.get("http_response_status_code") == "200"
            ):
                count += sample.value
            if sample.name == "http_server_active_requests":
                in_flight += sample.value
    return count, in_flight


@pytest.mark.parametrize(
    ("worker_class", "extra"),
    [
        ("sync", ()),
        ("gthread", ()),
        ("gthread", ("--max-requests", "40", "--max-requests-jitter", "10")),
    ],
    ids=["sync-kill", "gthread-kill", "gthread-max-requests"],
)
def test_exact_counts_across_workers(
    tmp_path: Path, worker_class: str, extra: tuple[str, ...]
) -> None:
    binary = real_binary("prometheus")
    env = {"WEB_CONCURRENCY": "4", "WORKER_CLASS": worker_class}
    with (
        example_shop(tmp_path, "--graceful-timeout", "5", *extra, env=env) as shop,
        prometheus(binary, [f"127.0.0.1:{shop.port}"], tmp_path) as prom,
    ):
        base, master = shop.base, shop.master
        deadline = time.monotonic() + 30
        while len(_workers(master.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        first = set(_workers(master.pid))
        assert len(first) == 4
        total, completed, killed = 800, 0, 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(_get, f"{base}/items/{1 + n % 3}") for n in range(total)]
            if not extra:  # kill a worker mid-run; gunicorn replaces it
                time.sleep(0.3)
                assert not all(f.done() for f in futures), "the run ended before the kill"
                killed = _workers(master.pid)[0]
                os.kill(killed, signal.SIGKILL)
            for future in futures:
                completed += future.result(timeout=120) == 200
        # gunicorn reaps a dead worker (child_exit) before it spawns the next
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            len(_workers(master.pid)) < 4 or killed in _workers(master.pid)
        ):
            time.sleep(0.1)
        interrupted = total - completed
        assert interrupted <= 8  # at most the requests the killed worker held
        # Whichever worker answers, every scrape sums every process that ever
        # ran: no completed request is lost. A request cut off by the kill
        # may have been recorded (its teardown ran before the body was sent).
        for _ in range(8):
            count, in_flight = _counts(base)
            assert completed <= count <= completed + interrupted
            if extra:
                assert count == completed == total  # recycling loses nothing
            assert in_flight == 0  # dead workers' gauges are gone
        # and through Prometheus's HTTP API, scraping the group every second
        promql = f'sum(http_server_request_duration_seconds_count{{http_route="{ROUTE}"}})'
        seen = wait_for_value(prom, promql, count, 30)
        assert seen == count and completed <= seen <= completed + interrupted
        now = set(_workers(master.pid))
        assert len(now) == 4
        # dead workers' files were folded into the compacted ones
        pids = {f.name[:-3].rsplit("_", 1)[1] for f in (tmp_path / "multiproc").glob("*.db")}
        assert "compacted" in pids, pids
        assert pids <= {str(pid) for pid in now} | {str(master.pid), "compacted"}, pids
        if extra:
            assert not first & now  # every first worker was recycled
        else:
            assert killed in first and killed not in now


def test_prometheus_sees_the_sum(tmp_path: Path) -> None:
    binary = real_binary("prometheus")
    with example_shop(tmp_path) as shop:
        base = shop.base
        with prometheus(binary, [f"127.0.0.1:{shop.port}"], tmp_path) as prom:
            with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                statuses = list(pool.map(_get, [f"{base}/items/2"] * 200))
            assert statuses.count(200) == 200
            count = "http_server_request_duration_seconds_count"
            promql = f'sum({count}{{job="shop", http_route="{ROUTE}"}})'
            assert wait_for_value(prom, promql, 200, 30) == 200
            assert float(query(prom, "sum(http_server_active_requests)")[0]["value"][1]) == 0


def _bench(script: str, *args: str) -> str:
    """Run one of bench/'s scripts, which check what they measure; return its output."""
    import subprocess

    result = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_compaction_keeps_every_count() -> None:
    # 4 live and 20 dead workers' files; worker_exited folds the dead ones;
    # the exposition must be the same (the script checks it sample by sample).
    output = _bench("bench_scrape.py", "--dead", "20", "--rounds", "1")
    assert "same exposition after: True" in output
    rows = {line.split("  ")[0]: line.split() for line in output.splitlines()}
    live = next(v for k, v in rows.items() if k.endswith("live workers"))
    compacted = next(v for k, v in rows.items() if k.endswith("dead, compacted"))
    # the live workers' files, and at most one compacted file per file type
    assert int(compacted[-3]) <= int(live[-3]) + 4


def test_load_loses_no_request() -> None:
    # wrk against 4 gunicorn workers: no failure, and /metrics counts every
    # request wrk saw completed (the script checks; its req/s are reported,
    # not asserted).
    real_binary("wrk")
    assert "failures 0" in _bench("bench_load.py", "--seconds", "2", "--rounds", "2")


def test_process_metrics_per_worker(tmp_path: Path) -> None:
    with example_shop(tmp_path) as shop:
        base, master = shop.base, shop.master
        deadline = time.monotonic() + 30
        while len(_workers(master.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = {str(pid) for pid in _workers(master.pid)}
        assert len(workers) == 4
        seen: set[str] = set()
        while time.monotonic() < deadline and seen != workers:
            with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
                text = response.read().decode()
            seen = {
                sample.labels["pid"]
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "flask_worker_resident_memory_bytes" and sample.value > 0
            }
            time.sleep(0.5)
        assert seen == workers  # one memory series per live worker, whichever answers


def _timed(url: str) -> tuple[int, float, str | None]:
    """(status, seconds taken, Retry-After) of one GET."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
            status, retry = int(response.status), response.headers["Retry-After"]
    except urllib.error.HTTPError as e:
        status, retry = int(e.code), e.headers["Retry-After"]
        e.close()
    return status, time.monotonic() - started, retry


def _refused_scrapes(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "flask_signal_metrics_scrapes_refused_total"
        and sample.labels == {"reason": "lock_timeout"}
    )


def test_a_held_lock_stops_neither_pages_nor_the_replacement_of_a_worker(
    tmp_path: Path,
) -> None:
    # The worst another user could do with a lock file they could open: hold
    # it. Scrapes are refused within their bound (no thread held for long),
    # pages keep coming, and the master replaces a killed worker.
    env = {"WEB_CONCURRENCY": "2", "WORKER_CLASS": "gthread"}
    with example_shop(tmp_path, env=env) as shop:
        base, master = shop.base, shop.master
        deadline = time.monotonic() + 30
        while len(_workers(master.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        directory = tmp_path / "multiproc"
        assert oct(directory.stat().st_mode & 0o777) == oct(0o700)
        with lock_held(directory):
            # twice as many scrapes as the workers have threads, and pages among them
            with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
                scrapes = [pool.submit(_timed, base + "/metrics") for _ in range(16)]
                pages = [pool.submit(_timed, f"{base}/items/1") for _ in range(40)]
                refused = [f.result(timeout=90) for f in scrapes]
                served = [f.result(timeout=90) for f in pages]
            assert [(status, retry) for status, _, retry in refused] == [(503, "1")] * 16
            assert max(seconds for _, seconds, _ in refused) < 15
            assert [status for status, _, _ in served] == [200] * 40
            assert max(seconds for _, seconds, _ in served) < 15
            killed = _workers(master.pid)[0]
            os.kill(killed, signal.SIGKILL)
            # A replacement that stays: seen twice, half a second apart (one
            # that died at boot would be seen once at most).
            deadline, seen = time.monotonic() + 60, 0
            while time.monotonic() < deadline and seen < 2:
                workers = _workers(master.pid)
                seen = seen + 1 if len(workers) == 2 and killed not in workers else 0
                time.sleep(0.5)
            log = (tmp_path / "gunicorn.log").read_text(errors="replace")
            assert seen == 2, f"not replaced; the server's log ends:\n{log[-4000:]}"
            # its files wait for a compaction the lock allows; scrapes count them
            assert list(directory.glob(f"*_{killed}.db"))
            assert [_get(f"{base}/items/1") for _ in range(20)] == [200] * 20
        count, in_flight = _counts(base)
        assert count == 60 and in_flight == 0
        assert _refused_scrapes(base) == 16


def test_the_example_makes_a_private_directory_and_removes_it(tmp_path: Path) -> None:
    # Without PROMETHEUS_MULTIPROC_DIR the example makes its own: a name
    # another user cannot guess and pre-create, readable by this user only.
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("flask-signal-metrics-*"))
    with example_shop(tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": ""}) as shop:
        assert _get(f"{shop.base}/items/1") == 200
        (made,) = set(temp.glob("flask-signal-metrics-*")) - before
        assert oct(made.stat().st_mode & 0o777) == oct(0o700)
        assert made.name != f"flask-signal-metrics-{shop.master.pid}"
        assert list(made.glob("*.db"))
        shop.master.terminate()
        shop.master.wait(timeout=30)
    assert not made.exists()
