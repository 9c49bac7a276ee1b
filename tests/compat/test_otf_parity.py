"""Parity with opentelemetry-instrumentation-flask (OTF) in its stable-conventions mode.

The same app (:mod:`tests.compat.parity_app`) and the same requests, once
under OTF's ``FlaskInstrumentor`` and once under ``SignalMetricsInstrumentor``,
each in a fresh interpreter with ``OTEL_SEMCONV_STABILITY_OPT_IN=http``; the
spans and metric points are compared point by point. Every difference must be
listed in :data:`ACCEPTED` with its reason, and every listed difference must
still occur, so the list stays true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from .parity_app import REQUESTS

ROOT = Path(__file__).resolve().parent.parent.parent
TIMEOUT = 60

#: ``(request, field)`` in :data:`ACCEPTED` for a difference in every request.
EVERY = "*"
#: The ``request`` of the differences in the metric points left at the end of the run.
END = "end"

Run = dict[str, t.Any]
Diffs = dict[str, tuple[object, object]]

_DASHES = (
    "captured header keeps its '-': the conventions' key is the lowercased header name"
    " (http.request.header.<key>, e.g. content-type)"
)
_UNDERSCORES = "OTF writes '_' for the header name's '-'; the conventions keep the name (see ours)"
_ROOT_ROUTE = "http.route SHOULD include the application root (SCRIPT_NAME /shop); OTF omits it"
_SIZES = (
    "http.server.{request,response}.body.size (Development, opt-in in the conventions):"
    " recorded by us, not by OTF"
)

#: Every difference of ours from OTF: ``(request, field) -> reason``.
#:
#: ``field`` is ``span.name``, ``span.kind``, ``span.status``,
#: ``span.ended_after_body``, ``span:<attribute>``, ``metric:<name>`` (a
#: metric only one side recorded), ``metric:<name>.<unit|scope|count|sum>`` or
#: ``metric:<name>:<attribute>``. ``request`` is a key of ``REQUESTS``,
#: :data:`EVERY` (the difference occurs in every request) or :data:`END`.
ACCEPTED: dict[tuple[str, str], str] = {
    # Every request: the conventions' server.address/port, header keys, scope.
    (EVERY, "span:server.address"): (
        "server.address is the host of the Host header without its port (shop.test);"
        " OTF gives the whole header (shop.test:8080)"
    ),
    (EVERY, "span:server.port"): (
        "server.port is the Host header's port (8080); OTF gives SERVER_PORT (80),"
        " the socket's port, which the conventions do not list as a source"
    ),
    (EVERY, "span:http.request.header.x-tenant-id"): _DASHES,
    (EVERY, "span:http.request.header.x_tenant_id"): _UNDERSCORES,
    (EVERY, "span:http.response.header.content-type"): _DASHES,
    (EVERY, "span:http.response.header.content_type"): _UNDERSCORES,
    (EVERY, "metric:http.server.request.duration.scope"): (
        "instrumentation scope: ours is flask_signal_metrics, OTF's its package"
    ),
    (EVERY, "metric:http.server.request.body.size"): _SIZES,
    (END, "metric:http.server.active_requests.scope"): (
        "instrumentation scope: ours is flask_signal_metrics, OTF's its package"
    ),
    # One request each.
    ("route", "span:url.query"): (
        "url.query: values of sig (and the conventions' other signature keys) SHOULD be"
        " replaced by REDACTED; OTF sends them as they came"
    ),
    ("raises", "span:error.type"): (
        "error.type: the exception's fully-qualified class name when one escaped"
        " (the conventions' first choice); OTF gives the status code ('500')"
    ),
    ("raises", "metric:http.server.request.duration:error.type"): (
        "error.type on the metric as on the span: the exception's fully-qualified class name"
    ),
    ("not_found", "span.name"): (
        "no route matched: the name is '{method}' alone; the conventions forbid the raw"
        " path as {target} (OTF: 'GET /nowhere', unbounded cardinality)"
    ),
    ("streamed", "span.ended_after_body"): (
        "a streamed response's span ends when the body is done (the span covers the"
        " response); OTF ends it at the request's teardown, before the body"
    ),
    ("mounted", "span.name"): "'{method} {http.route}', with the route's application root",
    ("mounted", "span:http.route"): _ROOT_ROUTE,
    ("mounted", "metric:http.server.request.duration:http.route"): _ROOT_ROUTE,
    ("mounted", "span:url.path"): (
        "url.path is the request's whole path (/shop/items/7); OTF gives PATH_INFO only"
    ),
    # Not "streamed": ours records no http.server.response.body.size for a streamed body.
    **{
        (name, "metric:http.server.response.body.size"): _SIZES
        for name in REQUESTS
        if name != "streamed"
    },
}

#: The environment of both interpreters (besides the inherited one, minus its OTEL_*).
ENVIRONMENT = {
    "OTEL_SEMCONV_STABILITY_OPT_IN": "http",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "x-tenant-id",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE": "content-type",
}


def _run(which: str) -> Run:
    """The driver's JSON, from a fresh interpreter instrumenting with ``which``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(ENVIRONMENT)
    code = f"from tests.compat.parity_app import main; main({which!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: Run = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    return {which: _run(which) for which in ("otf", "ours")}


def _span_diffs(otf: dict[str, t.Any], ours: dict[str, t.Any]) -> Diffs:
    diffs: Diffs = {}
    for field in ("name", "kind", "status", "ended_after_body"):
        if otf[field] != ours[field]:
            diffs[f"span.{field}"] = (otf[field], ours[field])
    for key in otf["attributes"].keys() | ours["attributes"].keys():
        theirs, mine = otf["attributes"].get(key), ours["attributes"].get(key)
        if theirs != mine:
            diffs[f"span:{key}"] = (theirs, mine)
    return diffs


def _by_name(points: list[dict[str, t.Any]]) -> dict[str, dict[str, t.Any]]:
    found: dict[str, dict[str, t.Any]] = {}
    for point in points:
        assert point["name"] not in found, f"two points of {point['name']}: {points}"
        found[point["name"]] = point
    return found


def _metric_diffs(otf: list[dict[str, t.Any]], ours: list[dict[str, t.Any]]) -> Diffs:
    """One point per metric and side: compare unit, scope, attributes, count/sum or value."""
    theirs, mine = _by_name(otf), _by_name(ours)
    diffs: Diffs = {}
    for name in theirs.keys() | mine.keys():
        if name not in theirs or name not in mine:
            diffs[f"metric:{name}"] = (theirs.get(name), mine.get(name))
            continue
        a, b = theirs[name], mine[name]
        fields = ["unit", "scope", "type", "count", "value"]
        if a["unit"] != "s":  # a duration's sum is a time: never equal
            fields.append("sum")
        for field in fields:
            if a.get(field) != b.get(field):
                diffs[f"metric:{name}.{field}"] = (a.get(field), b.get(field))
        for key in a["attributes"].keys() | b["attributes"].keys():
            if a["attributes"].get(key) != b["attributes"].get(key):
                diffs[f"metric:{name}:{key}"] = (a["attributes"].get(key), b["attributes"].get(key))
    return diffs


def _accepted(request: str) -> set[str]:
    every = {EVERY} if request in REQUESTS else set()
    return {field for (where, field) in ACCEPTED if where == request or where in every}


def _check(request: str, diffs: Diffs) -> None:
    """Every difference listed, and every one listed found."""
    accepted = _accepted(request)
    unlisted = {k: v for k, v in diffs.items() if k not in accepted}
    stale = sorted(accepted - diffs.keys())
    assert not unlisted, f"{request}: differences not in ACCEPTED (otf, ours): {unlisted}"
    assert not stale, f"{request}: listed in ACCEPTED but no longer different: {stale}"


def test_accepted_names_known_requests() -> None:
    assert {where for where, _ in ACCEPTED} <= {*REQUESTS, EVERY, END}
    assert all(reason.strip() and "\n" not in reason for reason in ACCEPTED.values())


@pytest.mark.parametrize("request_name", list(REQUESTS))
def test_request(runs: dict[str, Run], request_name: str) -> None:
    otf, ours = (runs[which]["requests"][request_name] for which in ("otf", "ours"))
    # The app's own answer is the same under both.
    assert (ours["status"], ours["body"]) == (otf["status"], otf["body"])
    assert len(otf["spans"]) == len(ours["spans"]) == 1, (otf["spans"], ours["spans"])
    diffs = _span_diffs(otf["spans"][0], ours["spans"][0])
    diffs.update(_metric_diffs(otf["metrics"], ours["metrics"]))
    _check(request_name, diffs)


def test_active_requests_end_at_zero(runs: dict[str, Run]) -> None:
    def active(run: Run) -> list[dict[str, t.Any]]:
        points = [p for p in run["final"] if p["name"] == "http.server.active_requests"]
        return sorted(points, key=lambda p: json.dumps(p["attributes"], sort_keys=True))

    otf, ours = active(runs["otf"]), active(runs["ours"])
    assert [p["value"] for p in otf] == [0] * len(otf) and otf
    assert [p["value"] for p in ours] == [0] * len(ours)
    # One point per method (GET, HEAD, _OTHER), with the same attributes.
    assert [p["attributes"] for p in ours] == [p["attributes"] for p in otf]
    diffs: Diffs = {}
    for a, b in zip(otf, ours, strict=True):
        diffs.update(_metric_diffs([a], [b]))
    _check(END, diffs)
