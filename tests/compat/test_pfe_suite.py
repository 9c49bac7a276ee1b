"""prometheus-flask-exporter 0.23.2's own test suite, its files unchanged, on our compat layer.

Its sdist (fetched by ``.ci/setup``, checked by hash) holds the test files;
they import ``prometheus_flask_exporter`` and ``unittest_helper``, which here
are ``pfe_shim/``: a package re-exporting :mod:`flask_signal_metrics.compat`
and a ``BaseTestCase`` of ours. The suite runs in a subprocess, and every
test's outcome must be the one listed: passed, or one of :data:`FAILING`
(each with its reason, also given in the migration guide) or
:data:`SKIPPED` (the file's own guards).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
SDIST = ROOT / ".cache" / "sdists" / "prometheus_flask_exporter-0.23.2.tar.gz"
SHIM = Path(__file__).parent / "pfe_shim"

#: The suite's tests, by file: every one runs (76 run, 3 skip on Flask >= 2.2).
TOTAL = 79

#: Tests that cannot pass, and why.
FAILING = {
    "test_defaults.py::DefaultsTest::test_default_labels": (
        "default_labels with a function ('dm': lambda: request.method) on the default"
        " metrics: refused at construction with a TypeError naming the alternative (a view"
        " metric with that label, applied to every view by register_default)"
    ),
}
if CONTENT_TYPE_LATEST != "text/plain; version=0.0.4; charset=utf-8":
    FAILING["test_metrics.py::MetricsTest::test_default_format"] = (
        "asserts a scrape without Accept gets prometheus_client's CONTENT_TYPE_LATEST"
        f" ({CONTENT_TYPE_LATEST}); that scrape gets the text format 0.0.4, as"
        " prometheus_client's own choose_encoder answers it (so does PFE itself)"
    )

#: Skipped by the files' own guards: they test Flask before 2.2.
SKIPPED = {
    "test_defaults.py::DefaultsTest::test_custom_defaults_prefix",
    "test_defaults.py::DefaultsTest::test_late_defaults_export",
    "test_defaults.py::DefaultsTest::test_export_latencies_as_summary",
}

INI = """[pytest]
filterwarnings =
    error
    # What the suite asks for: PFE's deprecated argument still works, with its warning.
    ignore:static_labels= is deprecated:DeprecationWarning
"""


def _outcomes(report: Path) -> dict[str, str]:
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[0]
        name = f"{module}.py::{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = (
            "failed"
            if kinds & {"failure", "error"}
            else "skipped"
            if "skipped" in kinds
            else "passed"
        )
    return outcomes


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not SDIST.is_file():
        if IN_CI:
            pytest.fail(f"{SDIST} is missing: .ci/setup fetches it")
        pytest.skip(f"{SDIST} is missing: run .ci/setup")
    where = tmp_path_factory.mktemp("pfe")
    with tarfile.open(SDIST) as sdist:
        members = [m for m in sdist.getmembers() if m.name.split("/")[1:2] == ["tests"]]
        sdist.extractall(where, members, filter="data")
    tests = where / "prometheus_flask_exporter-0.23.2" / "tests"
    (tests / "pytest.ini").write_text(INI)
    report = where / "report.xml"
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SHIM), str(ROOT)])}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"],
        cwd=tests,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    return _outcomes(report)


def test_every_test_of_the_suite_ran(suite: dict[str, str]) -> None:
    assert len(suite) == TOTAL, sorted(suite)


def test_each_test_passes_or_is_listed_with_its_reason(suite: dict[str, str]) -> None:
    expected = {
        name: "failed" if name in FAILING else "skipped" if name in SKIPPED else "passed"
        for name in suite
    }
    assert set(FAILING) <= set(suite) and set(suite) >= SKIPPED
    assert suite == expected
    assert sum(outcome == "passed" for outcome in suite.values()) == TOTAL - len(FAILING) - 3
