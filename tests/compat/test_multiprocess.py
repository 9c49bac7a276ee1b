"""The compat multiprocess classes: their checks, and the migrated example under gunicorn."""

from __future__ import annotations

import tempfile
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flask_signal_metrics.compat.multiprocess import GunicornPrometheusMetrics
from flask_signal_metrics.compat.multiprocess import MultiprocessPrometheusMetrics

from ..servers import gunicorn


def test_the_directory_must_be_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR"):
        GunicornPrometheusMetrics(app=None)


def test_the_base_class_says_which_process_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(NotImplementedError):
        MultiprocessPrometheusMetrics(app=None).start_http_server(0)


def _samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.real
def test_the_migrated_example_counts_exactly_across_workers(tmp_path: Path) -> None:
    directory = tempfile.mkdtemp(dir=tmp_path)  # mode 0700
    env = {"PROMETHEUS_MULTIPROC_DIR": directory}
    extra = ("-c", "examples/pfe_gunicorn.conf.py")
    with gunicorn("examples.pfe_migrated:app", tmp_path, workers=3, extra=extra, env=env) as base:
        for n in range(60):
            with urllib.request.urlopen(f"{base}/orders/{1 + n % 4}", timeout=10) as response:
                response.read()
        for _ in range(6):  # whichever worker answers, the sum of all three
            found = _samples(base)
            assert found[("orders_by_status_total", (("status", "200"),))] == 60
            assert found[("order_seconds_count", (("even", "False"),))] == 30
            assert found[("order_seconds_count", (("even", "True"),))] == 30
            assert found[("orders_in_progress", ())] == 0
            route = (("endpoint", "order"), ("method", "GET"), ("status", "200"))
            assert found[("flask_http_request_duration_seconds_count", route)] == 60
            assert found[("app_info", (("version", "1.0.0"),))] == 1
            assert not any(
                name[0].startswith("flask_http") and ("endpoint", "healthz") in name[1]
                for name in found
            )
