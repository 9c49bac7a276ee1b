"""Scrape time of a multiprocess directory after worker churn, with and without compaction.

    python bench/bench_scrape.py [--dead 300]

prometheus_client reads one file per process that ever lived, so with
gunicorn's max_requests (or crashes) every scrape gets slower. This fills a
directory the way a deployment does — one real worker process records the demo
shop's traffic, and its files stand in for every worker that ever ran — and
times a scrape (``/metrics`` as the app serves it) with the 4 live workers only,
with 300 dead ones besides, and after ``worker_exited`` compacted the dead ones.
Target: compacted at most 2x the live-only time.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
from examples.app import app
client = app.test_client()
for n in range(50):
    for path in ("/", "/items/1", "/items/9", "/boom", "/nope", "/stream"):
        client.get(path).close()
    client.post("/items/1/buy").close()
"""


def _fill(directory: Path, live: int, dead: int) -> list[int]:
    """Files for ``live + dead`` worker pids; returns the dead pids."""
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", WORKER],
        cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    template = list(directory.glob("*.db"))
    pid = template[0].name[:-3].rsplit("_", 1)[1]
    fake = list(range(100_000, 100_000 + live + dead))
    for number in fake:
        for file in template:
            shutil.copy(file, file.with_name(file.name.replace(f"_{pid}.db", f"_{number}.db")))
    for file in template:
        file.unlink()
    return fake[live:]


def _scrape_ms(rounds: int) -> float:
    from flask_signal_metrics.metrics.registry import default_registry
    from flask_signal_metrics.metrics.render import render as render_metrics

    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        body, _ = render_metrics([default_registry()], [])
        times.append(time.perf_counter() - start)
    assert b"http_server_request_duration_seconds_count" in body
    return statistics.median(times) * 1e3


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    from flask_signal_metrics.metrics.registry import default_registry
    from flask_signal_metrics.metrics.render import render as render_metrics

    text = render_metrics([default_registry()], [])[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        # dead workers' live gauges (in flight, per-worker process metrics) go, by design
        if family.name != "http_server_active_requests"
        and not family.name.startswith("flask_worker_")
    }


def _same(a: dict[t.Any, float], b: dict[t.Any, float]) -> bool:
    """Counts and buckets exactly; sums of floats up to their order of addition."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] if not k[0].endswith("_sum") else math.isclose(a[k], b[k], rel_tol=1e-9)
        for k in a
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dead", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # prometheus_client reads the variable when first imported: re-run with it set.
        scratch = tempfile.mkdtemp(prefix="bench-scrape-")
        try:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": scratch}
            return subprocess.run([sys.executable, *sys.argv], env=env, check=False).returncode
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    from flask_signal_metrics import worker_exited

    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    dead = _fill(directory, live=4, dead=0)
    assert not dead
    live_only = _scrape_ms(args.rounds)
    files_live = len(list(directory.glob("*.db")))
    for file in directory.glob("*.db"):
        file.unlink()
    dead = _fill(directory, live=4, dead=args.dead)
    before = _scrape_ms(args.rounds)
    files_before = len(list(directory.glob("*.db")))
    counts_before = _samples()
    start = time.perf_counter()
    for pid in dead:
        worker_exited(pid)
    compaction_ms = (time.perf_counter() - start) / len(dead) * 1e3
    after = _scrape_ms(args.rounds)
    files_after = len(list(directory.glob("*.db")))
    same = _same(counts_before, _samples())
    print(f"scrape of /metrics, median of {args.rounds}, prometheus_client multiprocess mode")
    print(f"{'directory':38} {'files':>6} {'ms':>8} {'x live':>7}")
    print(f"{'4 live workers':38} {files_live:6} {live_only:8.2f} {1:7.2f}")
    print(f"{f'4 live + {args.dead} dead, not compacted':38} {files_before:6} {before:8.2f} "
          f"{before / live_only:7.2f}")  # fmt: skip
    print(f"{f'4 live + {args.dead} dead, compacted':38} {files_after:6} {after:8.2f} "
          f"{after / live_only:7.2f}")  # fmt: skip
    print(f"compaction: {compaction_ms:.2f} ms per dead worker; same exposition after: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
