"""The example app under gunicorn, scraped by a real Prometheus: exact counts."""

from __future__ import annotations

import json
import time
import typing as t
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from examples import traffic

from .conftest import real_binary
from .servers import gunicorn
from .servers import prometheus
from .servers import query
from .servers import rotel
from .servers import wait_for_value

pytestmark = pytest.mark.real


def test_prometheus_sees_exactly_the_requests_sent(tmp_path: Path) -> None:
    binary = real_binary("prometheus")
    with gunicorn("examples.app:app", tmp_path) as base:
        target = base.removeprefix("http://")
        with prometheus(binary, [target], tmp_path) as prom:
            assert wait_for_value(prom, 'up{job="shop"}', 1, 30) == 1
            expected = traffic.drive(base, rounds=2)
            total = sum(expected.values())
            count = "http_server_request_duration_seconds_count"
            got_total = wait_for_value(prom, f'sum({count}{{job="shop"}})', total, 30)
            assert got_total == total
            by = "http_request_method, http_route, http_response_status_code"
            result = query(prom, f'sum by ({by}) ({count}{{job="shop"}})')
            seen = {
                (
                    r["metric"]["http_request_method"],
                    r["metric"].get("http_route", ""),
                    r["metric"]["http_response_status_code"],
                ): float(r["value"][1])
                for r in result
            }
            assert seen == {key: float(n) for key, n in expected.items()}
            # the excluded health check and the scrapes themselves are nowhere
            assert not query(prom, f'{count}{{http_route=~"/healthz|/metrics"}}')
            errors = query(prom, 'sum(flask_request_exceptions_total{error_type="RuntimeError"})')
            assert float(errors[0]["value"][1]) == 4  # /boom twice a round
            flashes = query(prom, 'flask_flashed_messages_total{category="success"}')
            assert float(flashes[0]["value"][1]) == 4  # two buys a round
            renders = query(prom, "sum(flask_template_render_duration_seconds_count)")
            assert float(renders[0]["value"][1]) == (5 + 7) * 2  # index + item pages
            # Waited for, not read once: a scrape reads the workers' files one
            # by one, so one that overlaps the last stream's close can see its
            # count but not yet its in-flight decrement (seen once in CI).
            assert wait_for_value(prom, "sum(http_server_active_requests)", 0, 30) == 0


def test_exemplars_in_prometheus_lead_to_traces_at_the_collector(tmp_path: Path) -> None:
    """Prometheus stores the exemplars it scrapes; their trace ids are spans rotel received."""
    binary = real_binary("prometheus")
    with rotel(tmp_path) as collector:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        with (
            gunicorn("examples.app:app", tmp_path, env=env) as base,
            prometheus(binary, [base.removeprefix("http://")], tmp_path) as prom,
        ):
            assert wait_for_value(prom, 'up{job="shop"}', 1, 30) == 1
            traffic.drive(base, rounds=1)
            deadline = time.monotonic() + 30
            exemplars: list[dict[str, t.Any]] = []
            while not exemplars and time.monotonic() < deadline:
                now = time.time()
                url = f"{prom}/api/v1/query_exemplars?" + urllib.parse.urlencode(
                    {
                        "query": "http_server_request_duration_seconds_bucket",
                        "start": now - 300,
                        "end": now + 60,
                    }
                )
                with urllib.request.urlopen(url, timeout=10) as response:
                    data = json.loads(response.read())["data"]
                exemplars = [e for series in data for e in series["exemplars"]]
                time.sleep(0.5)
        trace_ids = {e["labels"]["trace_id"] for e in exemplars}
        assert trace_ids, "Prometheus stored no exemplar"
        assert all(len(x) == 32 for x in trace_ids)
        collector.wait(
            lambda c: trace_ids <= {s["trace_id"] for s in c.spans()}, 30, "the exemplars' traces"
        )
