"""opentelemetry-instrumentation-flask 0.66b1's own tests, files unchanged, on our instrumentor.

Its sdist (fetched by ``.ci/setup``, checked by hash) holds the test files;
they import ``opentelemetry.instrumentation.flask``, which here is
``otf_shim/`` (first on the subprocess's ``PYTHONPATH``): a package whose
``FlaskInstrumentor`` is
:class:`~flask_signal_metrics.compat.opentelemetry.SignalMetricsInstrumentor`,
every other ``opentelemetry.*`` module staying the installed one. Their
``TestBase``/``WsgiTestBase`` come from opentelemetry-test-utils. The suite
runs in a subprocess, and every test's outcome must be the one listed in
:data:`EXPECTED`, each one not passing with its reason: a change of ours (or
of a dependency) that changes any outcome shows here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ..conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
NAME = "opentelemetry_instrumentation_flask-0.66b1"
SDIST = ROOT / ".cache" / "sdists" / f"{NAME}.tar.gz"
SHIM = Path(__file__).parent / "otf_shim"
TIMEOUT = 300

P, F, S = "passed", "failed", "skipped"

_AUTO = "test_automatic.py::TestAutomatic::"
_COPY = "test_copy_context.py::TestCopyContext::"
_COMPAT = "test_flask_compatibility.py::TestFlaskCompatibility::"
_THREADS = "test_multithreading.py::TestMultiThreading::"
_PROG = "test_programmatic.py::TestProgrammatic::"
_HEADERS = "test_programmatic.py::TestCustomRequestResponseHeaders::"
_SQL = "test_sqlcommenter.py::TestSQLCommenter::"
_TRACER = "test_programmatic.py::TestProgrammaticCustomTracerProvider"

#: Every test the suite collects (61), and its outcome.
EXPECTED: dict[str, str] = {
    f"{_AUTO}test_exluded_urls_explicit": P,
    f"{_AUTO}test_no_op_tracer_provider": P,
    f"{_AUTO}test_uninstrument": P,
    f"{_COPY}test_copycontext": P,
    f"{_COMPAT}test_concurrent_requests_isolation": P,
    f"{_COMPAT}test_context_leak_prevention": P,
    f"{_COMPAT}test_file_response_context_cleanup": P,
    f"{_COMPAT}test_flask_version_compatibility": P,
    f"{_COMPAT}test_generator_response_context_cleanup": P,
    f"{_COMPAT}test_multiple_requests_context_isolation": P,
    f"{_COMPAT}test_streaming_response_context_cleanup": P,
    # It patches opentelemetry.context.detach to raise: the request completes, and
    # the context before it is attached again (Tracing.detach), so later requests
    # are roots again.
    f"{_COMPAT}test_streaming_with_error_in_cleanup": P,
    # Pass without testing us: we set no _ENVIRON_* keys and register no
    # teardown_request function (the one it wraps twice is its own check), and
    # _request_ctx_ref is the shim's copy of the original's (Flask's request context).
    f"{_COMPAT}test_duplicate_teardown_request_does_not_cause_errors": P,
    f"{_COMPAT}test_request_context_reference_handling": P,
    f"{_THREADS}test_multithreaded": P,
    f"{_PROG}test_active_requests_counter_decremented_on_error": P,
    f"{_PROG}test_duration_histogram_new_record_with_context_new_semconv": P,
    f"{_PROG}test_duration_histogram_old_record_with_context": P,
    f"{_PROG}test_exclude_lists_from_env": P,
    f"{_PROG}test_exclude_lists_from_explicit": P,
    f"{_PROG}test_instrument_app_and_instrument": P,
    f"{_PROG}test_metric_uninstrument": P,
    f"{_PROG}test_not_recording": P,
    f"{_PROG}test_only_strings_in_environ": P,
    f"{_PROG}test_trace_response": P,
    f"{_PROG}test_uninstrument_app": P,
    f"{_PROG}test_uninstrument_app_after_instrument": P,
    # Pass without testing us: they check only the metrics of the scope
    # "opentelemetry.instrumentation.flask" and find none (ours are "flask_signal_metrics").
    f"{_PROG}test_basic_metric_nonstandard_http_method_allowed_success_new_semconv": P,
    f"{_PROG}test_basic_metric_nonstandard_http_method_success": P,
    f"{_PROG}test_basic_metric_nonstandard_http_method_success_new_semconv": P,
    f"{_PROG}test_basic_metric_success": P,
    f"{_PROG}test_basic_metric_success_new_semconv": P,
    f"{_PROG}test_flask_metric_values": P,
    f"{_TRACER}::test_custom_span_name": P,
    f"{_TRACER}WithoutApp::test_custom_span_name": P,
    f"{_HEADERS}test_custom_request_header_not_added_in_internal_span": P,
    f"{_HEADERS}test_custom_response_header_not_added_in_internal_span": P,
    f"{_SQL}test_sqlcommenter_disabled": P,
    # The file's own guard: skipIf(lambda: ...) is always true, so it skips on every Flask.
    f"{_COMPAT}test_flask_31_streaming_context_cleanup": S,
    # The stable names, and both sets under http/dup, as the original's.
    f"{_PROG}test_simple_new_semconv": P,
    f"{_PROG}test_simple_both_semconv": P,
    (
        "test_programmatic.py::TestProgrammaticWrappedWithOtherFramework"
        "::test_mark_span_internal_in_presence_of_span_from_other_framework"
    ): P,
    # Without OTEL_SEMCONV_STABILITY_OPT_IN they assert the old names only
    # (http.method, http.target ...): ours are the stable ones by default
    # (docs/migrating-otel.md; http/dup gives both, test_simple_both_semconv).
    f"{_PROG}test_simple": F,
    f"{_PROG}test_internal_error": F,
    # error.type "500" asserted for an escaped ValueError; ours is the exception's
    # fully qualified class name (the conventions' first choice), the only difference.
    f"{_PROG}test_internal_error_both_semconv": F,
    f"{_PROG}test_internal_error_new_semconv": F,
    # The old names only, as test_simple (the span name the request_hook set is right).
    "test_programmatic.py::TestProgrammaticHooks::test_hooks": F,
    "test_programmatic.py::TestProgrammaticHooksWithoutApp::test_no_app_hooks": F,
    # Span name of an unrouted request: "POST /bye" asserted, ours is "POST" (the
    # stable conventions' {method} when no route matched, docs/tracing.md).
    f"{_PROG}test_404": F,
    f"{_PROG}test_404_both_semconv": F,
    f"{_PROG}test_404_new_semconv": F,
    # OTel metrics: asserts metrics under the scope "opentelemetry.instrumentation.flask"
    # (ours are under "flask_signal_metrics": "False is not true").
    f"{_PROG}test_flask_metrics": F,
    f"{_PROG}test_flask_metrics_new_semconv": F,
    # OTel metrics: asserts http.server.active_requests points for requests that are
    # all excluded; we record nothing for excluded requests (get_metrics_data() is None).
    f"{_PROG}test_flask_metrics_excluded_urls": F,
    f"{_PROG}test_flask_metrics_excluded_urls_new_semconv": F,
    # Header capture: the class's patch.dict of the
    # OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_* variables is active only in the
    # test methods, not in setUp where instrument_app runs, and we read them there
    # (the original reads them per request), so nothing is captured; with them set
    # before, ours keep the header's dashes (http.request.header.custom-test-header-1),
    # where they assert custom_test_header_1 (docs/tracing.md).
    f"{_HEADERS}test_custom_request_header_added_in_server_span": F,
    f"{_HEADERS}test_custom_response_header_added_in_server_span": F,
    f"{_HEADERS}test_repeat_custom_request_header_added_in_server_span": F,
    f"{_HEADERS}test_repeat_custom_response_header_added_in_server_span": F,
    # SQL commenter not supported: instrument() enables it by default in the original
    # (asserts SQLCOMMENTER_ORM_TAGS_AND_VALUES in the view's context; ours: {}) ...
    f"{_SQL}test_sqlcommenter_enabled_default": F,
    # ... and instrument(enable_commenter=True, commenter_options=...) is a ValueError here.
    f"{_SQL}test_sqlcommenter_enabled_with_configurations": F,
}

INI = """[pytest]
filterwarnings =
    error
"""

#: Imported in the subprocess: the shim, and the modules it must not hide.
CHECK = """
import opentelemetry.instrumentation.flask as flask_instrumentation
import opentelemetry.instrumentation.instrumentor
import opentelemetry.instrumentation.propagators
import opentelemetry.instrumentation.utils
import opentelemetry.instrumentation.wsgi
import opentelemetry.instrumentation._semconv
import opentelemetry.sdk.trace
import opentelemetry.test.wsgitestutil
from flask_signal_metrics.compat.opentelemetry import SignalMetricsInstrumentor

assert flask_instrumentation.FlaskInstrumentor is SignalMetricsInstrumentor
for module in (
    flask_instrumentation,
    opentelemetry.instrumentation.instrumentor,
    opentelemetry.instrumentation.propagators,
    opentelemetry.instrumentation.utils,
    opentelemetry.instrumentation.wsgi,
    opentelemetry.instrumentation._semconv,
    opentelemetry.sdk.trace,
    opentelemetry.test.wsgitestutil,
):
    print(module.__name__, module.__file__)
"""

_RANK = {"passed": 0, "skipped": 1, "error": 2, "failed": 3}


def _outcomes(report: Path) -> dict[str, str]:
    """Each test's outcome, from pytest's JUnit XML report (the worst of its entries)."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        # "tests.test_programmatic.TestProgrammatic": the sdist's tests/ is a package.
        *_, module, cls = case.get("classname", "").split(".")
        name = f"{module}.py::{cls}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = (
            "failed"
            if "failure" in kinds
            else "error"
            if "error" in kinds
            else "skipped"
            if "skipped" in kinds
            else "passed"
        )
        if _RANK[outcome] >= _RANK[outcomes.get(name, "passed")]:
            outcomes[name] = outcome
    return outcomes


def _environ() -> dict[str, str]:
    """The subprocess's environment: the shim first, and no OTel or metrics setting of ours."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "SIGNAL_METRICS_"))
        and key not in ("PROMETHEUS_MULTIPROC_DIR", "PYTEST_ADDOPTS")
    }
    inherited = [environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else []
    environ["PYTHONPATH"] = os.pathsep.join([str(SHIM), str(ROOT), *inherited])
    return environ


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="module")
def tests_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist's tests/, extracted (nothing else of it: its own package is not importable)."""
    if not SDIST.is_file():
        _missing(f"{SDIST} is missing: .ci/setup fetches it")
    if importlib.util.find_spec("opentelemetry.test") is None:
        _missing("opentelemetry-test-utils is missing: the suite's TestBase (tests group)")
    where = tmp_path_factory.mktemp("otf")
    with tarfile.open(SDIST) as sdist:
        members = [m for m in sdist.getmembers() if m.name.split("/")[1:2] == ["tests"]]
        sdist.extractall(where, members, filter="data")
    tests = where / NAME / "tests"
    (tests / "pytest.ini").write_text(INI)
    return tests


@pytest.fixture(scope="module")
def suite(tests_dir: Path) -> dict[str, str]:
    report = tests_dir.parent / "report.xml"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            f"--junitxml={report}",
        ],
        cwd=tests_dir,
        env=_environ(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert report.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    return _outcomes(report)


def test_the_shim_hides_only_the_flask_instrumentation(tests_dir: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=tests_dir,
        env=_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    files = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert Path(files.pop("opentelemetry.instrumentation.flask")).is_relative_to(SHIM)
    assert not [f for f in files.values() if Path(f).is_relative_to(SHIM)], files


def test_every_test_of_the_suite_has_its_expected_outcome(suite: dict[str, str]) -> None:
    differences = {
        name: f"expected {EXPECTED.get(name, 'not collected')}, got {suite.get(name, 'none')}"
        for name in sorted(set(suite) | set(EXPECTED))
        if suite.get(name) != EXPECTED.get(name)
    }
    assert not differences, differences
    assert len(suite) == 61
