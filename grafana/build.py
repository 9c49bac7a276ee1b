"""Generate the Grafana dashboards and Prometheus rules for both naming schemes.

    python grafana/build.py            # rewrite grafana/dashboards/ and grafana/rules/
    python grafana/build.py --check    # exit 1 if the committed files differ

One description of every panel and rule, rendered for ``otel`` (the default
semantic-convention names) and ``classic`` (prometheus-flask-exporter's), so
the two variants cannot drift apart. Standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing as t
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Rate window of every dashboard query (Grafana's own, scrape-interval aware).
RATE = "$__rate_interval"

#: The availability objective the error-budget alerts defend.
AVAILABILITY_SLO = 0.999
#: The latency objective: this share of requests faster than LATENCY_LE seconds.
LATENCY_SLO = 0.99
#: A bucket bound, spelled as prometheus_client exposes it ("0.5", "1.0").
LATENCY_LE = "0.5"

#: (long window, short window, burn factor, for, severity): the SRE workbook's
#: multi-window, multi-burn-rate table.
BURN_TIERS = [
    ("1h", "5m", 14.4, "2m", "critical"),
    ("6h", "30m", 6, "15m", "critical"),
    ("1d", "2h", 3, "1h", "warning"),
    ("3d", "6h", 1, "3h", "warning"),
]
WINDOWS = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]


@dataclasses.dataclass(frozen=True)
class Naming:
    """What differs between the two naming schemes."""

    name: str
    duration: str  # histogram base name
    method: str
    route: str
    status: str
    info: str

    def uid(self, base: str) -> str:
        return base if self.name == "otel" else f"{base}-classic"

    def title(self, base: str) -> str:
        return base if self.name == "otel" else f"{base} (classic names)"


OTEL = Naming(
    "otel",
    "http_server_request_duration_seconds",
    "http_request_method",
    "http_route",
    "http_response_status_code",
    "flask_signal_metrics_info",
)
CLASSIC = Naming(
    "classic",
    "flask_http_request_duration_seconds",
    "method",
    "path",
    "status",
    "flask_exporter_info",
)
NAMINGS = (OTEL, CLASSIC)

#: Matchers every dashboard selector carries.
SEL = 'job=~"$job", instance=~"$instance"'

DASHBOARD_UIDS = {
    "overview": "flask-signal-metrics-overview",
    "route": "flask-signal-metrics-route",
    "internals": "flask-signal-metrics-internals",
}

# -- dashboards ---------------------------------------------------------------


def _target(expr: str, legend: str = "", ref: str = "A", **extra: t.Any) -> dict[str, t.Any]:
    target: dict[str, t.Any] = {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": True,
        "refId": ref,
    }
    target.update(extra)
    return target


def _panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    targets: list[dict[str, t.Any]],
    grid: tuple[int, int, int, int],
    **options: t.Any,
) -> dict[str, t.Any]:
    x, y, w, h = grid
    panel: dict[str, t.Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": targets,
        "options": options,
    }
    if kind == "stat":
        panel["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            **options,
        }
    return panel


def _row(title: str, y: int) -> dict[str, t.Any]:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def _query_variable(name: str, label: str, query: str, all_value: str) -> dict[str, t.Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def _variables(n: Naming) -> list[dict[str, t.Any]]:
    count = f"{n.duration}_count"
    variables = [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        },
        _query_variable("job", "Job", f"label_values({n.info}, job)", ".+"),
        _query_variable(
            "instance", "Instance", f'label_values({n.info}{{job=~"$job"}}, instance)', ".+"
        ),
        # ".*": "All" includes the requests that matched no route (empty label).
        _query_variable("route", "Route", f"label_values({count}{{{SEL}}}, {n.route})", ".*"),
    ]
    return variables


def _dashboard(
    n: Naming, key: str, title: str, description: str, panels: list[dict[str, t.Any]]
) -> dict[str, t.Any]:
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    links = [
        {
            "type": "dashboards",
            "tags": ["flask-signal-metrics"],
            "asDropdown": False,
            "includeVars": True,
            "keepTime": True,
            "title": "Flask dashboards",
        }
    ]
    return {
        "uid": n.uid(DASHBOARD_UIDS[key]),
        "title": n.title(title),
        "description": description,
        "tags": ["flask-signal-metrics", "flask", n.name],
        "schemaVersion": 39,
        "editable": False,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "refresh": "30s",
        "links": links,
        "templating": {"list": _variables(n)},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "panels": panels,
    }


def _quantiles(selector: str, n: Naming, by: str = "") -> list[dict[str, t.Any]]:
    group = f"le, {by}" if by else "le"
    return [
        _target(
            f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({n.duration}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
            ref,
            exemplar=True,
        )
        for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
    ]


def _heatmap(
    n: Naming, selector: str, description: str, grid: tuple[int, int, int, int]
) -> dict[str, t.Any]:
    expr = f"sum by (le) (rate({n.duration}_bucket{{{selector}}}[{RATE}]))"
    target = _target(expr, "{{le}}", format="heatmap", exemplar=True)
    return _panel(
        "heatmap",
        "Latency heatmap",
        description,
        "s",
        [target],
        grid,
        calculate=False,
        yAxis={"unit": "s"},
        cellGap=1,
    )


def overview(n: Naming) -> dict[str, t.Any]:
    count, bucket = f"{n.duration}_count", f"{n.duration}_bucket"
    sel = f'{SEL}, {n.route}=~"$route"'
    rate_all = f"sum(rate({count}{{{sel}}}[{RATE}]))"
    errors = f'sum(rate({count}{{{sel}, {n.status}=~"5.."}}[{RATE}]))'
    panels = [
        _row("Overview", 0),
        _panel(
            "stat",
            "Request rate",
            f"Requests per second, all routes (`{count}`).",
            "reqps",
            [_target(rate_all)],
            (0, 1, 5, 4),
        ),
        _panel(
            "stat",
            "Error ratio (5xx)",
            "Share of requests answered with a 5xx status. 4xx are the clients' errors and "
            "are not counted.",
            "percentunit",
            [_target(f"{errors} / {rate_all}")],
            (5, 1, 5, 4),
        ),
        _panel(
            "stat",
            "p99 latency",
            f"99th percentile of request duration over all routes (`{bucket}`).",
            "s",
            [
                _target(
                    f"histogram_quantile(0.99, sum by (le) (rate({bucket}{{{sel}}}[{RATE}])))",
                    exemplar=True,
                )
            ],
            (10, 1, 5, 4),
        ),
        _panel(
            "stat",
            "In flight",
            "Requests being handled right now (`http_server_active_requests`).",
            "short",
            [_target(f"sum(http_server_active_requests{{{SEL}}})", instant=True)],
            (15, 1, 4, 4),
        ),
        _panel(
            "stat",
            "Unhandled exceptions",
            "Exceptions per second that escaped a view (`flask_request_exceptions_total`).",
            "ops",
            [
                _target(
                    "sum(rate(flask_request_exceptions_total"
                    f'{{{SEL}, http_route=~"$route"}}[{RATE}]))'
                )
            ],
            (19, 1, 5, 4),
        ),
        _row("Traffic", 5),
        _panel(
            "timeseries",
            "Requests by status class",
            "Requests per second by status class (2xx, 3xx, 4xx, 5xx).",
            "reqps",
            [
                _target(
                    f"sum by (status_class) (label_replace(rate({count}{{{sel}}}[{RATE}]),"
                    f' "status_class", "${{1}}xx", "{n.status}", "(.).*"))',
                    "{{status_class}}",
                )
            ],
            (0, 6, 12, 8),
        ),
        _panel(
            "timeseries",
            "Top routes",
            "The ten busiest routes (route templates; empty = no route matched).",
            "reqps",
            [
                _target(
                    f"topk(10, sum by ({n.route}) (rate({count}{{{sel}}}[{RATE}])))",
                    f"{{{{{n.route}}}}}",
                )
            ],
            (12, 6, 12, 8),
        ),
        _row("Latency", 14),
        _panel(
            "timeseries",
            "Latency p50 / p90 / p99",
            "Request duration percentiles over all routes, from the histogram buckets. "
            "Exemplars link to the traces of sampled requests.",
            "s",
            _quantiles(sel, n),
            (0, 15, 12, 8),
        ),
        _heatmap(n, sel, "Requests per bucket of duration.", (12, 15, 12, 8)),
    ]
    return _dashboard(
        n,
        "overview",
        "Flask / Overview",
        "Rate, errors and duration of a Flask app measured by flask-signal-metrics.",
        panels,
    )


def route(n: Naming) -> dict[str, t.Any]:
    count = f"{n.duration}_count"
    sel = f'{SEL}, {n.route}=~"$route"'
    # The size histograms carry the semantic-convention labels in both schemes.
    size_sel = f'{SEL}, http_route=~"$route"'
    per_route = f"sum by ({n.route}) (rate({count}{{{sel}}}[{RATE}]))"
    panels = [
        _panel(
            "timeseries",
            "Requests by status",
            "Requests per second of the selected routes, by status code.",
            "reqps",
            [
                _target(
                    f"sum by ({n.status}) (rate({count}{{{sel}}}[{RATE}]))", f"{{{{{n.status}}}}}"
                )
            ],
            (0, 0, 12, 8),
        ),
        _panel(
            "timeseries",
            "Error ratio (5xx) by route",
            "Share of each route's requests answered with a 5xx status.",
            "percentunit",
            [
                _target(
                    f'sum by ({n.route}) (rate({count}{{{sel}, {n.status}=~"5.."}}[{RATE}]))'
                    f" / {per_route}",
                    f"{{{{{n.route}}}}}",
                )
            ],
            (12, 0, 12, 8),
        ),
        _panel(
            "timeseries",
            "Latency p50 / p90 / p99 by route",
            "Request duration percentiles of each selected route.",
            "s",
            _quantiles(sel, n, by=n.route),
            (0, 8, 12, 8),
        ),
        _heatmap(n, sel, "Requests of the selected routes per bucket of duration.", (12, 8, 12, 8)),
        _panel(
            "timeseries",
            "Request body size p90",
            "90th percentile of the declared request body size"
            " (`http_server_request_body_size_bytes`).",
            "bytes",
            [
                _target(
                    "histogram_quantile(0.9, sum by (le, http_route) "
                    f"(rate(http_server_request_body_size_bytes_bucket{{{size_sel}}}[{RATE}])))",
                    "{{http_route}}",
                )
            ],
            (0, 16, 12, 8),
        ),
        _panel(
            "timeseries",
            "Response body size p90",
            "90th percentile of the response body size; streams of unknown length are not counted.",
            "bytes",
            [
                _target(
                    "histogram_quantile(0.9, sum by (le, http_route) "
                    f"(rate(http_server_response_body_size_bytes_bucket{{{size_sel}}}[{RATE}])))",
                    "{{http_route}}",
                )
            ],
            (12, 16, 12, 8),
        ),
        _panel(
            "timeseries",
            "Unhandled exceptions by type",
            "Exceptions per second that escaped the selected routes' views, by class.",
            "ops",
            [
                _target(
                    "sum by (http_route, error_type) "
                    f"(rate(flask_request_exceptions_total{{{size_sel}}}[{RATE}]))",
                    "{{http_route}} {{error_type}}",
                )
            ],
            (0, 24, 24, 8),
        ),
    ]
    return _dashboard(
        n,
        "route",
        "Flask / Route",
        "One route at a time: traffic, errors, latency and body sizes.",
        panels,
    )


def internals(n: Naming) -> dict[str, t.Any]:
    template = "flask_template_render_duration_seconds"
    panels = [
        _panel(
            "timeseries",
            "Unhandled exceptions by type",
            "Exceptions per second that escaped a view (got_request_exception), by class.",
            "ops",
            [
                _target(
                    "sum by (error_type) (rate(flask_request_exceptions_total"
                    f'{{{SEL}, http_route=~"$route"}}[{RATE}]))',
                    "{{error_type}}",
                )
            ],
            (0, 0, 12, 8),
        ),
        _panel(
            "timeseries",
            "Flashed messages by category",
            "flash() calls per second by category (`flask_flashed_messages_total`).",
            "ops",
            [
                _target(
                    f"sum by (category) (rate(flask_flashed_messages_total{{{SEL}}}[{RATE}]))",
                    "{{category}}",
                )
            ],
            (12, 0, 12, 8),
        ),
        _panel(
            "timeseries",
            "Template renders by template",
            f"Renders per second of each template (`{template}_count`).",
            "ops",
            [
                _target(
                    f"sum by (template) (rate({template}_count{{{SEL}}}[{RATE}]))", "{{template}}"
                )
            ],
            (0, 8, 12, 8),
        ),
        _panel(
            "timeseries",
            "Template render p95",
            "95th percentile of render time per template.",
            "s",
            [
                _target(
                    f"histogram_quantile(0.95, sum by (le, template) "
                    f"(rate({template}_bucket{{{SEL}}}[{RATE}])))",
                    "{{template}}",
                )
            ],
            (12, 8, 12, 8),
        ),
        _panel(
            "timeseries",
            "Receiver errors",
            "Failures inside the extension's receivers, by signal; the requests went on "
            "unharmed. Anything above zero is worth a look at the app's log.",
            "ops",
            [
                _target(
                    "sum by (signal) "
                    f"(rate(flask_signal_metrics_receiver_errors_total{{{SEL}}}[{RATE}]))",
                    "{{signal}}",
                )
            ],
            (0, 16, 12, 8),
        ),
        _panel(
            "timeseries",
            "Series folded into overflow",
            "Recordings per second that went to a metric's overflow series because it reached "
            "SIGNAL_METRICS_MAX_SERIES label sets.",
            "ops",
            [
                _target(
                    "sum by (metric) "
                    f"(rate(flask_signal_metrics_series_overflow_total{{{SEL}}}[{RATE}]))",
                    "{{metric}}",
                )
            ],
            (12, 16, 12, 8),
        ),
    ]
    return _dashboard(
        n,
        "internals",
        "Flask / Exceptions, templates, flashes",
        "What Flask's other signals show: unhandled exceptions, template renders, flashed "
        "messages, and the extension's own health.",
        panels,
    )


DASHBOARDS: dict[str, t.Callable[[Naming], dict[str, t.Any]]] = {
    "overview": overview,
    "route": route,
    "internals": internals,
}

# -- rules ----------------------------------------------------------------------


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is valid YAML)."""
    return json.dumps(value)


def rules(n: Naming) -> str:
    count, bucket = f"{n.duration}_count", f"{n.duration}_bucket"
    prefix = "flask_signal_metrics"
    errors, slow = f"{prefix}_request_errors", f"{prefix}_requests_slow"
    lines = ["groups:", f"  - name: {prefix}.rules", "    rules:"]

    def record(name: str, expr: str) -> None:
        lines.extend([f"      - record: {name}", f"        expr: {_q(expr)}"])

    record(f"job:{prefix}_requests:rate5m", f"sum by (job) (rate({count}[5m]))")
    record(
        f"job_route:{prefix}_requests:rate5m",
        f"sum by (job, {n.route}) (rate({count}[5m]))",
    )
    record(f"job_le:{n.duration}_bucket:rate5m", f"sum by (job, le) (rate({bucket}[5m]))")
    record(
        f"job:{n.duration}:p99_5m",
        f"histogram_quantile(0.99, job_le:{n.duration}_bucket:rate5m)",
    )
    # The dashboards' heaviest queries (per-route latency and status), pre-aggregated
    # for deployments with many instances; see README.md for the swap.
    record(
        f"job_instance_route_le:{n.duration}_bucket:rate5m",
        f"sum by (job, instance, {n.route}, le) (rate({bucket}[5m]))",
    )
    record(
        f"job_instance_route_status:{prefix}_requests:rate5m",
        f"sum by (job, instance, {n.route}, {n.status}) (rate({count}[5m]))",
    )
    lines.extend([f"  - name: {prefix}.slo.rules", "    rules:"])
    for w in WINDOWS:
        record(
            f"job:{errors}:ratio_rate{w}",
            f'sum by (job) (rate({count}{{{n.status}=~"5.."}}[{w}]))'
            f" / sum by (job) (rate({count}[{w}]))",
        )
    for w in WINDOWS:
        record(
            f"job:{slow}:ratio_rate{w}",
            f'1 - sum by (job) (rate({bucket}{{le="{LATENCY_LE}"}}[{w}]))'
            f" / sum by (job) (rate({count}[{w}]))",
        )
    lines.extend([f"  - name: {prefix}.alerts", "    rules:"])
    overview_url = f"/d/{n.uid(DASHBOARD_UIDS['overview'])}?var-job={{{{ $labels.job }}}}"

    def alert(
        name: str, expr: str, wait: str, labels: dict[str, str], summary: str, description: str
    ) -> None:
        lines.extend([f"      - alert: {name}", f"        expr: {_q(expr)}"])
        if wait:
            lines.append(f"        for: {wait}")
        lines.append("        labels:")
        lines.extend(f"          {k}: {_q(v)}" for k, v in labels.items())
        lines.extend(
            [
                "        annotations:",
                f"          summary: {_q(summary)}",
                f"          description: {_q(description)}",
                f"          dashboard_url: {_q(overview_url)}",
            ]
        )

    budget = round(1 - AVAILABILITY_SLO, 6)
    for long, short, factor, wait, severity in BURN_TIERS:
        alert(
            "FlaskErrorBudgetBurn",
            f"job:{errors}:ratio_rate{long} > ({factor} * {budget})"
            f" and job:{errors}:ratio_rate{short} > ({factor} * {budget})",
            wait,
            {"severity": severity, "long": long, "short": short},
            "A Flask app is burning its error budget too fast.",
            f"Job {{{{ $labels.job }}}} answers {{{{ $value | humanizePercentage }}}} of its"
            f" requests with a 5xx over {long} and {short}: {factor}x the rate that spends"
            f" a {AVAILABILITY_SLO:.1%} objective's budget in 30 days.",
        )
    latency_budget = round(1 - LATENCY_SLO, 6)
    for long, short, factor, wait, severity in BURN_TIERS[:2]:
        alert(
            "FlaskLatencyBudgetBurn",
            f"job:{slow}:ratio_rate{long} > ({factor} * {latency_budget})"
            f" and job:{slow}:ratio_rate{short} > ({factor} * {latency_budget})",
            wait,
            {"severity": severity, "long": long, "short": short},
            "A Flask app answers too many requests slowly.",
            f"Job {{{{ $labels.job }}}}: {{{{ $value | humanizePercentage }}}} of its requests"
            f" took longer than {LATENCY_LE} s over {long} and {short}, {factor}x the"
            f" {1 - LATENCY_SLO:.0%} a {LATENCY_SLO:.0%} objective allows.",
        )
    alert(
        "FlaskUnhandledExceptions",
        "sum by (job, http_route, error_type) (increase(flask_request_exceptions_total[10m])) > 0",
        "",
        {"severity": "warning"},
        "A Flask app raised unhandled exceptions.",
        "Job {{ $labels.job }} raised {{ $value | humanize }} {{ $labels.error_type }}"
        ' on route "{{ $labels.http_route }}" in the last 10 minutes.',
    )
    alert(
        "FlaskTargetDown",
        f"up == 0 and on (job, instance) max_over_time({n.info}[1d]) > 0",
        "5m",
        {"severity": "critical"},
        "A Flask app cannot be scraped.",
        "Prometheus has failed to scrape {{ $labels.instance }} of job {{ $labels.job }}"
        " for 5 minutes.",
    )
    return "\n".join(lines) + "\n"


def rule_tests(n: Naming) -> str:
    """promtool unit tests: every alert fires for a failing job, stays silent for a healthy one."""
    count, bucket = f"{n.duration}_count", f"{n.duration}_bucket"
    route = f'{n.method}="GET", {n.route}="/items"'
    url = f"/d/{n.uid(DASHBOARD_UIDS['overview'])}?var-job=bad"

    def series(name: str, labels: str, values: str) -> list[str]:
        return [f"      - series: {_q(name + '{' + labels + '}')}", f"        values: {_q(values)}"]

    def inputs(job: str, errors: int, fast: int, exceptions: str, up: str) -> list[str]:
        at = f'job="{job}", instance="{job}:8000"'
        lines: list[str] = []
        # 100 requests a minute: `errors` of them 5xx, `fast` of them under LATENCY_LE.
        for status, per_minute, fast_part in (
            ("200", 100 - errors, fast - fast * errors // 100),
            ("500", errors, fast * errors // 100),
        ):
            labels = f'{at}, {route}, {n.status}="{status}"'
            lines += series(count, labels, f"0+{per_minute}x300")
            lines += series(bucket, f'{labels}, le="{LATENCY_LE}"', f"0+{fast_part}x300")
            lines += series(bucket, f'{labels}, le="+Inf"', f"0+{per_minute}x300")
        lines += series(
            "flask_request_exceptions_total",
            f'{at}, http_request_method="GET", http_route="/items", error_type="ValueError"',
            exceptions,
        )
        lines += series(n.info, f'{at}, version="0.1.0"', "1x10 _x290")
        lines += series("up", at, up)
        return lines

    def expected(name: str, labels: dict[str, str], summary: str, description: str) -> list[str]:
        out = ["          - exp_labels:"]
        out += [f"              {k}: {_q(v)}" for k, v in {"job": "bad", **labels}.items()]
        out += [
            "            exp_annotations:",
            f"              summary: {_q(summary)}",
            f"              description: {_q(description)}",
            f"              dashboard_url: {_q(url)}",
        ]
        return out

    instance = {"instance": "bad:8000"}
    firing: dict[str, list[str]] = {"FlaskErrorBudgetBurn": [], "FlaskLatencyBudgetBurn": []}
    for long, short, factor, _, severity in BURN_TIERS[:3]:  # the 3d/6h tier waits 3h
        firing["FlaskErrorBudgetBurn"] += expected(
            "FlaskErrorBudgetBurn",
            {"severity": severity, "long": long, "short": short},
            "A Flask app is burning its error budget too fast.",
            f"Job bad answers 10% of its requests with a 5xx over {long} and {short}: {factor}x"
            f" the rate that spends a {AVAILABILITY_SLO:.1%} objective's budget in 30 days.",
        )
    for long, short, factor, _, severity in BURN_TIERS[:2]:
        firing["FlaskLatencyBudgetBurn"] += expected(
            "FlaskLatencyBudgetBurn",
            {"severity": severity, "long": long, "short": short},
            "A Flask app answers too many requests slowly.",
            f"Job bad: 50% of its requests took longer than {LATENCY_LE} s over {long} and"
            f" {short}, {factor}x the {1 - LATENCY_SLO:.0%} a {LATENCY_SLO:.0%} objective allows.",
        )
    firing["FlaskUnhandledExceptions"] = expected(
        "FlaskUnhandledExceptions",
        {"severity": "warning", "http_route": "/items", "error_type": "ValueError"},
        "A Flask app raised unhandled exceptions.",
        'Job bad raised 10 ValueError on route "/items" in the last 10 minutes.',
    )
    firing["FlaskTargetDown"] = expected(
        "FlaskTargetDown",
        {"severity": "critical", **instance},
        "A Flask app cannot be scraped.",
        "Prometheus has failed to scrape bad:8000 of job bad for 5 minutes.",
    )
    lines = [
        f"rule_files: [flask-signal-metrics-{n.name}.rules.yml]",
        "evaluation_interval: 1m",
        "tests:",
        "  # A failing job: 10% 5xx, half the requests slow, exceptions, down after 10m.",
        "  - interval: 1m",
        "    input_series:",
        *inputs("bad", 10, 50, "0+1x300", "1x10 0x290"),
        "    alert_rule_test:",
    ]
    for name, alerts in firing.items():
        lines += ["      - eval_time: 70m", f"        alertname: {name}", "        exp_alerts:"]
        lines += alerts
    lines += [
        "  # A healthy job: no 5xx, every request fast, no exception, always up.",
        "  - interval: 1m",
        "    input_series:",
        *inputs("good", 0, 100, "0x300", "1x300"),
        "    alert_rule_test:",
    ]
    for name in firing:
        lines += ["      - eval_time: 70m", f"        alertname: {name}", "        exp_alerts: []"]
    return "\n".join(lines) + "\n"


def readme() -> str:
    """grafana/README.md: README.template.md with the panel and alert tables filled in."""
    panels = []
    for build_one in DASHBOARDS.values():
        board = build_one(OTEL)
        panels.append(f"## {board['title']} (`{board['uid']}`)\n\n{board['description']}\n\n")
        panels.append("| panel | unit | query (otel names) |\n| --- | --- | --- |\n")
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            exprs = "<br>".join(
                "`" + target["expr"].replace("|", "\\|") + "`" for target in panel["targets"]
            )
            unit = panel["fieldConfig"]["defaults"]["unit"]
            panels.append(f"| **{panel['title']}**: {panel['description']} | {unit} | {exprs} |\n")
        panels.append("\n")
    alerts = [
        f"| FlaskErrorBudgetBurn | {severity} | 5xx ratio over {long} and {short} above"
        f" {factor} x {1 - AVAILABILITY_SLO:.3f}, for {wait} |"
        for long, short, factor, wait, severity in BURN_TIERS
    ]
    alerts += [
        f"| FlaskLatencyBudgetBurn | {severity} | share slower than {LATENCY_LE} s over"
        f" {long} and {short} above {factor} x {1 - LATENCY_SLO:.2f}, for {wait} |"
        for long, short, factor, wait, severity in BURN_TIERS[:2]
    ]
    alerts += [
        "| FlaskUnhandledExceptions | warning | an unhandled exception in the last 10 minutes,"
        " by route and type |",
        "| FlaskTargetDown | critical | a target that exposed the extension's info metric in"
        " the last day cannot be scraped, for 5m |",
    ]
    text = (HERE / "README.template.md").read_text()
    for marker, value in {
        "@PANELS@": "".join(panels),
        "@ALERTS@": "\n".join(alerts),
        "@AVAILABILITY@": f"{AVAILABILITY_SLO:.1%}",
        "@LATENCY@": f"{LATENCY_SLO:.0%}",
        "@LE@": LATENCY_LE,
        "@WINDOWS@": ", ".join(WINDOWS),
    }.items():
        text = text.replace(marker, value)
    return text


# -- output ---------------------------------------------------------------------


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    files: dict[Path, str] = {HERE / "README.md": readme()}
    for n in NAMINGS:
        for key, build in DASHBOARDS.items():
            path = HERE / "dashboards" / n.name / f"flask-{key}.json"
            files[path] = json.dumps(build(n), indent=2) + "\n"
        files[HERE / "rules" / f"flask-signal-metrics-{n.name}.rules.yml"] = rules(n)
        files[HERE / "rules" / f"flask-signal-metrics-{n.name}.test.yml"] = rule_tests(n)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files differ")
    args = parser.parse_args(argv)
    stale = []
    for path, content in outputs().items():
        if args.check:
            if not path.exists() or path.read_text() != content:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    if stale:
        print("out of date, run python grafana/build.py:", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
