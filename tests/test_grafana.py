"""The shipped dashboards and rules: lint, PromQL, promtool, compose, and a real Prometheus."""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
import typing as t
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from examples import traffic
from flask_signal_metrics import SignalMetrics
from grafana import build

from .conftest import make_app
from .conftest import real_binary
from .conftest import ROOT
from .servers import gunicorn
from .servers import prometheus
from .servers import query

GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*/*.json"))
Dashboard = dict[str, t.Any]

#: Grafana's units used by the dashboards (a subset of its unit list).
UNITS = {"reqps", "percentunit", "s", "short", "ops", "bytes"}
DEPRECATED_PANELS = {"graph", "singlestat", "table-old"}
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__all"}


def _load(path: Path) -> Dashboard:
    return t.cast(Dashboard, json.loads(path.read_text()))


def _panels(dashboard: Dashboard) -> list[dict[str, t.Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _exprs(dashboard: Dashboard) -> list[tuple[str, str]]:
    """(panel title, expr) of every target."""
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def _variables(dashboard: Dashboard) -> dict[str, dict[str, t.Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


@pytest.fixture(params=DASHBOARD_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def dashboard(request: pytest.FixtureRequest) -> Dashboard:
    return _load(request.param)


def test_generated_files_are_committed_and_current() -> None:
    assert len(DASHBOARD_FILES) == 6
    assert build.main(["--check"]) == 0


def test_uids_and_titles_are_unique_and_valid() -> None:
    dashboards = [_load(p) for p in DASHBOARD_FILES]
    uids = [d["uid"] for d in dashboards]
    titles = [d["title"] for d in dashboards]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    for d in dashboards:
        assert re.fullmatch(r"[a-z0-9-]{8,40}", d["uid"]), d["uid"]
        assert d.get("id") is None
        assert isinstance(d["schemaVersion"], int) and 39 <= d["schemaVersion"] <= 42
        assert d["editable"] is False
        assert "__inputs" not in d and "${DS_" not in json.dumps(d)


def test_template_variables(dashboard: Dashboard) -> None:
    variables = _variables(dashboard)
    datasources = [v for v in variables.values() if v["type"] == "datasource"]
    assert len(datasources) == 1
    assert datasources[0]["name"] == "datasource"
    assert datasources[0]["label"] == "Data source"
    assert datasources[0]["query"] == "prometheus"
    for name, label in (("job", "Job"), ("instance", "Instance")):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] in ("$datasource", "${datasource}")
        assert variable["multi"] is True and variable["allValue"] == ".+"
        assert variable["label"] == label
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["refresh"] == 2
            text = variable["query"]["query"]
            assert re.fullmatch(r"(label_values|label_names|metrics|query_result)\(.+\)", text)


def test_panels(dashboard: Dashboard) -> None:
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    boxes = []
    for panel in panels:
        assert panel["type"] not in DEPRECATED_PANELS
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24 and grid["h"] >= 1
        boxes.append((panel["title"], grid))
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for i, (title_a, a) in enumerate(boxes):
        for title_b, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"{title_a!r} overlaps {title_b!r}"


_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
_RANGE = re.compile(r"\[([^\]]+)\]")


def test_promql_follows_the_lint_rules(dashboard: Dashboard) -> None:
    defined = set(_variables(dashboard)) | BUILTIN_VARIABLES
    for title, expr in _exprs(dashboard):
        where = f"{dashboard['title']} / {title}: {expr}"
        # every range is $__rate_interval (target-rate-interval-rule)
        assert all(r == "$__rate_interval" for r in _RANGE.findall(expr)), where
        selectors = _SELECTOR.findall(expr)
        assert selectors, where
        for name, matchers in selectors:
            # target-job-rule / target-instance-rule
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, where
            # target-counter-agg-rule, on the metric name
            if name.endswith("_total") or name.endswith("_bucket") or name.endswith("_count"):
                assert re.search(rf"\b(rate|irate|increase)\({name}\{{", expr), where
        # histogram_quantile over sum by (le, ...) of a rate
        for match in re.finditer(r"histogram_quantile\(", expr):
            rest = expr[match.end() :]
            assert re.match(r"[0-9.]+, sum by \(le[,)].*?\(rate\(", rest), where
        # (${1} is label_replace's capture group; Grafana leaves unknown names alone)
        for variable in re.findall(r"\$\{?([A-Za-z_]\w*)", expr):
            assert variable in defined, f"{where}: ${variable} is not defined"


def _catalogue() -> set[str]:
    """Every sample name the extension exposes, in both namings."""
    names: set[str] = set()
    for naming in ("otel", "classic"):
        registry = CollectorRegistry()
        app = make_app()
        SignalMetrics(app, registry=registry, naming=naming)
        client = app.test_client()
        for path in ["/item/1", "/boom", "/page"]:
            client.get(path)
        for metric in registry.collect():
            names.update(sample.name for sample in metric.samples)
            names.add(metric.name)
    return names | {"up"}


def test_every_metric_exists_in_the_catalogue() -> None:
    catalogue = _catalogue()
    texts = [expr for path in DASHBOARD_FILES for _, expr in _exprs(_load(path))]
    texts += [
        v["query"]["query"]
        for path in DASHBOARD_FILES
        for v in _variables(_load(path)).values()
        if v["type"] == "query"
    ]
    for rules in (GRAFANA / "rules").glob("*.rules.yml"):
        for group in yaml.safe_load(rules.read_text())["groups"]:
            texts += [rule["expr"] for rule in group["rules"]]
    used = set()
    for text in texts:
        for name in re.findall(r"\b([a-z_]+(?:_total|_count|_bucket|_info|_requests))\b", text):
            used.add(name)
    used = {n for n in used if not n.startswith(("job", "flask_signal_metrics_request"))}
    assert used, "no metric names found"
    missing = used - catalogue
    assert not missing, missing


def test_latency_bucket_is_spelled_as_exposed() -> None:
    registry = CollectorRegistry()
    app = make_app()
    SignalMetrics(app, registry=registry)
    app.test_client().get("/item/1")
    les = {
        s.labels["le"]
        for m in registry.collect()
        if m.name == "http_server_request_duration_seconds"
        for s in m.samples
        if "le" in s.labels
    }
    assert build.LATENCY_LE in les


def _expand(expr: str, job: str) -> str:
    return (
        expr.replace("$__rate_interval", "30s")
        .replace("$job", job)
        .replace("$instance", ".+")
        .replace("$route", ".*")
    )


@pytest.mark.real
def test_every_expression_parses(tmp_path: Path) -> None:
    promtool = real_binary("promtool")
    rules = [
        {"record": f"dashboard:expr_{n}", "expr": _expand(expr, "shop")}
        for n, (_, expr) in enumerate(e for path in DASHBOARD_FILES for e in _exprs(_load(path)))
    ]
    # the variables' label_values(<selector>, label) selectors too
    selectors = {
        re.fullmatch(r"label_values\((.+), \w+\)", v["query"]["query"]).group(1)  # type: ignore[union-attr]
        for path in DASHBOARD_FILES
        for v in _variables(_load(path)).values()
        if v["type"] == "query"
    }
    rules += [
        {"record": f"dashboard:variable_{n}", "expr": _expand(selector, "shop")}
        for n, selector in enumerate(sorted(selectors))
    ]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@pytest.mark.real
@pytest.mark.parametrize("naming", ["otel", "classic"])
def test_rules_check_and_unit_tests(naming: str) -> None:
    promtool = real_binary("promtool")
    rules = GRAFANA / "rules" / f"flask-signal-metrics-{naming}.rules.yml"
    checked = subprocess.run(
        [promtool, "check", "rules", "--lint-fatal", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = rules.with_name(f"flask-signal-metrics-{naming}.test.yml")
    tested = subprocess.run(
        [promtool, "test", "rules", tests.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tests.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(rules.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert alerts == {
        "FlaskErrorBudgetBurn",
        "FlaskLatencyBudgetBurn",
        "FlaskUnhandledExceptions",
        "FlaskTargetDown",
    }
    # each alert is exercised by the unit tests, firing and silent
    test_text = tests.read_text()
    for alert in alerts:
        assert test_text.count(f"alertname: {alert}") == 2, alert


def test_alerts_link_to_shipped_dashboards() -> None:
    uids = {_load(p)["uid"] for p in DASHBOARD_FILES}
    rule_files = sorted((GRAFANA / "rules").glob("*.rules.yml"))
    alerts = [
        rule
        for rules in rule_files
        for group in yaml.safe_load(rules.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    # the shipped rules have alerts: an empty list would make the loop below hold vacuously
    assert rule_files and len(alerts) >= 4, (rule_files, alerts)
    for rule in alerts:
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"]
        uid = re.match(r"/d/([a-z0-9-]+)\?", annotations["dashboard_url"])
        assert uid is not None and uid.group(1) in uids, rule["alert"]


def test_provisioning() -> None:
    provider = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/flask-signal-metrics.yaml").read_text()
    )
    assert provider["apiVersion"] == 1
    [entry] = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"]
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["jsonData"]["timeInterval"]
    [link] = source["jsonData"]["exemplarTraceIdDestinations"]
    assert link["name"] == "trace_id" and "$${__value.raw}" in link["url"]
    compose = yaml.safe_load((GRAFANA / "docker-compose.yml").read_text())
    grafana_mounts = compose["services"]["grafana"]["volumes"]
    assert f"./dashboards:{entry['options']['path']}:ro" in grafana_mounts


@pytest.mark.real
def test_compose_file_is_valid() -> None:
    compose = yaml.safe_load((GRAFANA / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"app", "prometheus", "grafana", "otel-collector", "jaeger"}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (GRAFANA / source).resolve().exists(), source
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    binary = real_binary("docker-compose")
    result = subprocess.run(
        [binary, "-f", "docker-compose.yml", "config", "-q"],
        cwd=GRAFANA,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# -- end to end -------------------------------------------------------------------


def _series(base: str, match: str) -> list[dict[str, str]]:
    url = f"{base}/api/v1/series?" + urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(url, timeout=10) as response:
        return t.cast(list[dict[str, str]], json.load(response)["data"])


def _keep_busy(bases: list[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for base in bases:
            traffic.drive(base)


@pytest.mark.real
def test_every_panel_and_variable_has_data(tmp_path: Path) -> None:
    binary = real_binary("prometheus")
    with (
        gunicorn("examples.app:app", tmp_path / "otel") as otel,
        gunicorn(
            "examples.app:app",
            tmp_path / "classic",
            env={"FLASK_SIGNAL_METRICS_NAMING": "classic"},
        ) as classic,
    ):
        jobs = {"otel": otel.removeprefix("http://"), "classic": classic.removeprefix("http://")}
        rules = sorted(str(p) for p in (GRAFANA / "rules").glob("*.rules.yml"))
        with prometheus(binary, jobs, tmp_path, rule_files=rules) as prom:
            busy = threading.Thread(target=_keep_busy, args=([otel, classic], 8), daemon=True)
            busy.start()
            busy.join(timeout=60)
            time.sleep(2.5)  # two more scrapes
            checked = 0
            for path in DASHBOARD_FILES:
                naming = path.parent.name
                dashboard = _load(path)
                for name, variable in _variables(dashboard).items():
                    if variable["type"] != "query":
                        continue
                    text = variable["query"]["query"]
                    inner, label = re.fullmatch(r"label_values\((.+), (\w+)\)", text).groups()  # type: ignore[union-attr]
                    found = _series(prom, _expand(inner, naming))
                    assert any(s.get(label) for s in found), f"{path.name}: ${name} is empty"
                for title, expr in _exprs(dashboard):
                    result = query(prom, _expand(expr, naming))
                    where = f"{naming}/{path.name} / {title}: {expr}"
                    assert result, f"no data: {where}"
                    values = [float(r["value"][1]) for r in result]
                    assert all(math.isfinite(v) for v in values), f"{values}: {where}"
                    if dashboard_unit(dashboard, title) == "percentunit":
                        assert all(0 <= v <= 1 for v in values), where
                    checked += 1
            assert checked == 52  # every target of the six dashboards
            with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=10) as response:
                groups = json.load(response)["data"]["groups"]
            loaded = [rule for group in groups for rule in group["rules"]]
            assert len(loaded) == 56
            assert all(rule["health"] == "ok" for rule in loaded), [
                (r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"
            ]


def dashboard_unit(dashboard: Dashboard, title: str) -> str:
    for panel in _panels(dashboard):
        if panel["title"] == title:
            return t.cast(str, panel["fieldConfig"]["defaults"]["unit"])
    raise KeyError(title)
