"""The ``BaseTestCase`` prometheus-flask-exporter's test files import.

Their sdist does not ship it; this one is written for them, no looser than
theirs: a metric is found by its exact name and exactly the given label set,
its value matched as a pattern from its start, and the metrics endpoint must
answer 200. :meth:`BaseTestCase.assertAbsent` is stricter: no series of the
name may carry the given labels, whatever others it has.
"""

from __future__ import annotations

import re
import typing as t
import unittest

import flask
import prometheus_client
from prometheus_flask_exporter import PrometheusMetrics

_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \S+)?\Z")
_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|\Z)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class Sample(t.NamedTuple):
    name: str
    labels: dict[str, str]
    value: str


def _labels(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _PAIR.match(text, position)
        if match is None:
            raise AssertionError(f"cannot read the labels {text!r}")
        value = re.sub(r"\\[\\\"n]", lambda m: _ESCAPES[m.group()], match.group(2))
        found[match.group(1)] = value
        position = match.end()
    return found


def samples(text: str) -> list[Sample]:
    """Every sample line of a text exposition."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise AssertionError(f"not a sample line: {line!r}")
        found.append(Sample(match.group(1), _labels(match.group(2) or ""), match.group(3)))
    return found


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


class BaseTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.app = flask.Flask(__name__)
        self.app.testing = True
        self.client = self.app.test_client()
        # A fresh registry per test, as the original resets the global one.
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)

    def metrics(self, **kwargs: t.Any) -> PrometheusMetrics:
        kwargs.setdefault("registry", self.registry)
        return PrometheusMetrics(self.app, **kwargs)

    def assumeMinimumFlaskVersion(self, version: str) -> None:
        if _version(_flask()) < _version(version):
            self.skipTest(f"needs Flask {version} or newer")

    def assumeBeforeFlaskVersion(self, version: str) -> None:
        if _version(_flask()) >= _version(version):
            self.skipTest(f"needs a Flask older than {version}")

    def _samples(self, endpoint: str) -> list[Sample]:
        response = self.client.get(endpoint)
        self.assertEqual(response.status_code, 200, f"{endpoint} answered {response.status}")
        return samples(response.get_data(as_text=True))

    def assertMetric(
        self, name: str, value: object, *labels: tuple[str, object], endpoint: str = "/metrics"
    ) -> None:
        expected = {key: str(label) for key, label in labels}
        found = [s for s in self._samples(endpoint) if s.name == name and s.labels == expected]
        if len(found) != 1:
            raise AssertionError(f"expected one series {name}{expected}, found {len(found)}")
        if re.match(str(value), found[0].value) is None:
            raise AssertionError(f"{name}{expected} is {found[0].value}, not {value!r}")

    def assertAbsent(
        self, name: str, *labels: tuple[str, object], endpoint: str = "/metrics"
    ) -> None:
        expected = {key: str(label) for key, label in labels}
        for sample in self._samples(endpoint):
            if sample.name == name and expected.items() <= sample.labels.items():
                raise AssertionError(f"{name}{sample.labels} = {sample.value} is present")


def _flask() -> str:
    from importlib.metadata import version

    return version("flask")
