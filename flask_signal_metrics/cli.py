"""``flask signal-metrics report``: what an app measures, from live numbers.

Run in a shell on the production box:

.. code-block:: text

    flask --app shop signal-metrics report --url http://127.0.0.1:8000/metrics
    flask --app shop signal-metrics report --multiproc-dir /run/prometheus --json

It prints the signals the app listens to, every metric family with its series
count, the metrics nearest their series cap (and their widest label), and
the overflow and receiver-error counts. Without ``--url`` or
``--multiproc-dir`` it reads this process's own registries, which in a shell
only shows what is declared.
"""

from __future__ import annotations

import base64
import json
import typing as t
import urllib.parse
import urllib.request

import click
from flask import current_app
from flask.cli import AppGroup

from .metrics.names import RECEIVER_ERRORS
from .metrics.names import SERIES_OVERFLOW
from .metrics.names import SIGNAL_ERRORS
from .metrics.names import SIGNAL_OVERFLOW
from .metrics.readback import collect
from .metrics.readback import FamilySummary
from .metrics.readback import parse_text
from .metrics.readback import read_multiprocess
from .metrics.readback import summarize
from .multiprocess.directory import LockUnavailable
from .receivers import SIGNAL_NAMES
from .state import get_state

if t.TYPE_CHECKING:
    from .config import Settings

group = AppGroup("signal-metrics", help="Inspect what flask-signal-metrics measures.")

_OVERFLOW = (SERIES_OVERFLOW, SIGNAL_OVERFLOW)
_ERRORS = (RECEIVER_ERRORS, SIGNAL_ERRORS)


@group.command("report")
@click.option("--url", help="Read a running app's metrics from this URL (its /metrics).")
@click.option(
    "--multiproc-dir",
    type=click.Path(exists=True, file_okay=False),
    help="Read a gunicorn deployment's prometheus_client multiprocess directory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--top", default=5, show_default=True, help="How many metrics nearest the cap.")
def report(url: str | None, multiproc_dir: str | None, as_json: bool, top: int) -> None:
    """Signals listened to, metric families and their series, caps, overflow, errors."""
    state = get_state(current_app)
    if url and multiproc_dir:
        raise click.UsageError("Give --url or --multiproc-dir, not both.")
    if url:
        source = url
        metrics = parse_text(_fetch(url, _credentials(state.settings)))
    elif multiproc_dir:
        source = multiproc_dir
        metrics = read_multiprocess(multiproc_dir)
    else:
        source = "this process"
        try:
            metrics = collect(state.collectors, state.settings.lock_timeout)
        except LockUnavailable as e:
            raise click.ClickException(f"cannot read the metrics now: {e}; try again.") from e
    families = summarize(metrics)
    cap = state.settings.max_series
    data = {
        "app": current_app.name,
        "source": source,
        "max_series": cap,
        "signals": {
            "flask": list(SIGNAL_NAMES) if state.metrics is not None else [],
            "app": sorted(set(state.declared)),
        },
        "families": [
            {"name": f.name, "type": f.type, "series": f.series, "labels": f.labels}
            for f in families
        ],
        "nearest_cap": _nearest_cap(families, cap, top),
        "overflow": _totals(families, _OVERFLOW, "metric"),
        "receiver_errors": _totals(families, _ERRORS, "signal"),
    }
    click.echo(json.dumps(data, indent=2) if as_json else _text(data))


def _credentials(settings: Settings) -> dict[str, str]:
    """The Authorization the app's /metrics asks for, from its own config."""
    if settings.bearer_token is not None:
        return {"Authorization": f"Bearer {settings.bearer_token}"}
    if settings.basic_auth is not None:
        pair = ":".join(settings.basic_auth).encode()
        return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
    return {}


def _fetch(url: str, credentials: dict[str, str]) -> str:
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    for name, value in credentials.items():
        # Followed by _SameOrigin only: the app's secret is for the app.
        request.add_unredirected_header(name, value)
    opener = urllib.request.build_opener(_SameOrigin(credentials, _origin(url)))
    try:
        with opener.open(request, timeout=10) as response:
            return t.cast(bytes, response.read()).decode()
    except OSError as e:
        raise click.ClickException(f"Cannot read {url}: {e}") from None


class _SameOrigin(urllib.request.HTTPRedirectHandler):
    """Redirects keep the credentials on the given URL's scheme, host and port only."""

    def __init__(self, credentials: dict[str, str], origin: tuple[str, str | None, int | None]):
        self._credentials = credentials
        self._origin = origin

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: t.IO[bytes],
        code: int,
        msg: str,
        headers: t.Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        # The first URL's origin, not the last hop's: A -> B -> B keeps them from B.
        if new is not None and _origin(newurl) == self._origin:
            for name, value in self._credentials.items():
                new.add_unredirected_header(name, value)
        return new


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _nearest_cap(families: list[FamilySummary], cap: int, top: int) -> list[dict[str, t.Any]]:
    ranked = sorted((f for f in families if f.labels), key=lambda f: -f.series)[:top]
    return [
        {
            "metric": f.name,
            "series": f.series,
            "of_cap": round(f.series / cap, 4),
            "widest_label": max(f.labels, key=lambda label: f.labels[label]),
            "values": max(f.labels.values()),
        }
        for f in ranked
    ]


def _totals(families: list[FamilySummary], names: tuple[str, ...], label: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for family in families:
        if family.name in names:
            for key, value in family.totals.items():
                name = dict(key).get(label, "")
                totals[name] = totals.get(name, 0.0) + value
    return totals


def _text(data: dict[str, t.Any]) -> str:
    lines = [
        f"flask-signal-metrics report for app {data['app']!r} (from {data['source']})",
        "",
        "Signals listened to:",
        "  Flask: " + (", ".join(data["signals"]["flask"]) or "none (disabled)"),
        "  the app's own: " + (", ".join(data["signals"]["app"]) or "none declared"),
        "",
        f"Metric families ({len(data['families'])}):",
    ]
    width = max((len(f["name"]) for f in data["families"]), default=0)
    for f in data["families"]:
        lines.append(f"  {f['name']:{width}}  {f['type']:9}  {f['series']:>6} series")
    lines += ["", f"Nearest the cap of {data['max_series']} series per metric:"]
    for n in data["nearest_cap"]:
        lines.append(
            f"  {n['metric']}: {n['series']} series ({n['of_cap']:.1%}),"
            f" widest label {n['widest_label']} with {n['values']} values"
        )
    for title, key in (
        ("Overflow (recordings folded)", "overflow"),
        ("Receiver errors", "receiver_errors"),
    ):
        nonzero = {k: v for k, v in data[key].items() if v}
        lines += [
            "",
            f"{title}: " + (", ".join(f"{k} {v:g}" for k, v in nonzero.items()) or "none"),
        ]
    return "\n".join(lines)
