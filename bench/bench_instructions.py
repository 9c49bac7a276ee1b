"""Instructions per request, counted by valgrind: the noise-free twin of bench_requests.py.

A shared machine's timings drift by tens of percent between runs; counted
instructions do not. For each variant of ``bench_requests.py`` this runs the
same app under ``valgrind --tool=callgrind`` twice, with N and N + K requests,
and divides the difference by K, so start-up and warm-up cancel out.

    python bench/bench_instructions.py [--requests K]            # bench_requests.py's variants
    python bench/bench_instructions.py --bench tracing           # bench_tracing.py's variants
    python bench/bench_instructions.py --bench auto              # instrument_app, ours vs OTF
    python bench/bench_instructions.py --bench demo              # bench_demo.py's variants

Needs valgrind (Debian package ``valgrind``). Instructions are not time (a
cache miss costs more than an add), but the ratios track the timed ones and
repeat to the per mille.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import typing as t
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN_ONE = """
import sys
sys.path.insert(0, {here!r})
import bench_{bench} as b
from werkzeug.test import EnvironBuilder
headers = {{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
environ = EnvironBuilder(path={path!r}, method="GET", headers=headers).get_environ()
app = b.VARIANTS[{variant!r}]()[0]  # first: a variant may set the environment for imports
from bench_requests import run_round
run_round(app.wsgi_app, environ, 300)
run_round(app.wsgi_app, environ, {requests})
"""


class Bench(t.NamedTuple):
    variants: tuple[str, ...]
    #: The variant overheads are divided by, if any.
    peer: str | None
    #: (variant, variant, label): more overhead ratios to print.
    ratios: tuple[tuple[str, str, str], ...]
    path: str = "/item/42"
    #: The ``bench_*.py`` module of the variants (default: the bench's name).
    module: str | None = None


BENCHES: dict[str, Bench] = {
    "requests": Bench(("bare", "floor", "least", "ours", "lean", "pfe"), "pfe", ()),
    # Two decorator metrics on the view (a counter by status, a histogram), and the defaults.
    "views": Bench(("bare", "ours_views", "pfe_views"), "pfe_views", (), module="requests"),
    "tracing": Bench(
        (
            *("bare", "metrics", "nosdk", "unsampled", "full", "second"),
            *("floor", "floor0", "dropmin", "peers"),
        ),
        "peers",
        (
            ("unsampled", "metrics", "unsampled / metrics only (target <= 2)"),
            ("floor0", "metrics", "unsampled floor / metrics only"),
            ("dropmin", "metrics", "unsampled, least drop path / metrics only"),
            ("nosdk", "metrics", "no SDK / metrics only (target <= 1.2)"),
        ),
    ),
    # Both instrumentors' instrument_app, the same tracer and meter providers.
    # floor*: the SDK's share alone (a span; plus one histogram; plus OTF's counter).
    "auto": Bench(
        ("bare", "floor", "floor_duration", "floor_otf", "ours_auto", "otf_auto"),
        "otf_auto",
        (),
        module="tracing",
    ),
    # The demo's /items/1 (a template) as bench_load.py drives it under
    # gunicorn: bare/variant is the requests/s ratio a CPU-bound server gets.
    "demo": Bench(("bare", "floor", "single", "multi"), None, (), "/items/1"),
}


def instructions(bench: str, variant: str, requests: int) -> int:
    code = RUN_ONE.format(
        here=str(HERE),
        bench=BENCHES[bench].module or bench,
        variant=variant,
        requests=requests,
        path=BENCHES[bench].path,
    )
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(result.stderr[-2000:])
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--bench", choices=list(BENCHES), default="requests")
    parser.add_argument("--only", nargs="*", help="count these variants only (with bare)")
    args = parser.parse_args(argv)
    variants, peer, ratios, path, _ = BENCHES[args.bench]
    if args.only:
        variants = tuple(v for v in variants if v in {"bare", peer, *args.only})
        ratios = tuple(r for r in ratios if r[0] in variants and r[1] in variants)
    if shutil.which("valgrind") is None:
        print("valgrind not found: apt-get install valgrind", file=sys.stderr)
        return 2
    per_request = {}
    for variant in variants:
        low = instructions(args.bench, variant, 200)
        high = instructions(args.bench, variant, 200 + args.requests)
        per_request[variant] = (high - low) / args.requests
    base = per_request["bare"]
    over = {variant: count - base for variant, count in per_request.items()}
    print(f"instructions per request (valgrind), {args.requests} requests of GET {path}")
    ratio = f"ratio/{peer}" if peer else ""
    width = max(10, *map(len, per_request))
    print(f"{'variant':{width}} {'instr/req':>10} {'overhead':>10} {ratio:>12} {'bare/this':>10}")
    for variant, count in per_request.items():
        relative = f"{over[variant] / over[peer]:12.3f}" if peer else " " * 12
        cells = f"{count:10.0f} {over[variant]:10.0f} {relative} {base / count:10.3f}"
        print(f"{variant:{width}} {cells}")
    for a, b, label in ratios:
        print(f"{label:44} {over[a] / over[b]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
