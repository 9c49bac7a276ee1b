from __future__ import annotations

import pytest

from flask_signal_metrics import labels
from flask_signal_metrics.config import KNOWN_METHODS


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("GET", "GET"),
        ("PATCH", "PATCH"),
        ("QUERY", "_OTHER"),
        ("get", "_OTHER"),
        ("X" * 500, "_OTHER"),
    ],
)
def test_method_table(given: str, expected: str) -> None:
    assert labels.method_table(KNOWN_METHODS).get(given, labels.OTHER) == expected


class Outer:
    class Inner(Exception):
        pass


@pytest.mark.parametrize(
    ("status", "exception", "expected"),
    [
        (200, None, ""),
        (404, None, ""),
        (500, None, "500"),
        (503, None, "503"),
        (500, ValueError(), "ValueError"),
        (503, Outer.Inner(), "tests.test_labels.Outer.Inner"),
    ],
)
def test_error_type(status: int, exception: BaseException | None, expected: str) -> None:
    assert labels.error_type(status, exception) == expected


def test_template() -> None:
    assert labels.template("a.html") == "a.html"
    assert labels.template(None) == labels.STRING_TEMPLATE
