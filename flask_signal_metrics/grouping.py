"""The grouping of the request metrics' route label (``SIGNAL_METRICS_GROUP_BY``).

Pure functions of the setting and the request; no metrics library. A grouping
is fixed per URL rule (the rule's template, its endpoint), and then looked up
once per rule, or taken from each request (its path, a function of yours),
and then bounded by ``SIGNAL_METRICS_MAX_SERIES`` like every label.
"""

from __future__ import annotations

import re
import typing as t

if t.TYPE_CHECKING:
    from flask import Request
    from werkzeug.routing import Rule

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: The groupings by name, and the classic label each fills.
NAMED = {
    "route": "path",  # the URL rule's template, with the application root
    "url_rule": "url_rule",  # prometheus-flask-exporter's name for the same
    "endpoint": "endpoint",
    "path": "path",  # the raw path: one series per path, up to the cap
    "full_path": "full_path",  # with the query string
}

#: Groupings that are the same for every request of a rule.
PER_RULE = frozenset(("route", "url_rule", "endpoint"))


class Grouping(t.NamedTuple):
    """How the route label is filled: its classic label name, and from what."""

    #: The setting's name (one of :data:`NAMED`), or None for a function.
    name: str | None
    #: The classic duration's label for it.
    label: str
    #: A function of the request giving the label's value (a function grouping).
    function: t.Callable[[Request], object] | None = None

    @property
    def per_rule(self) -> bool:
        return self.name in PER_RULE

    def of_rule(self, rule: Rule) -> str:
        """The label of every request of ``rule`` (a per-rule grouping)."""
        return rule.endpoint if self.name == "endpoint" else rule.rule

    def of_request(self, request: Request) -> str:
        """The label of one request (a per-request grouping)."""
        if self.function is not None:
            return str(self.function(request))
        return request.full_path if self.name == "full_path" else request.path


ROUTE = Grouping("route", "path")


def parse(key: str, value: object) -> Grouping:
    """``SIGNAL_METRICS_GROUP_BY``: a grouping's name, or a named function of the request."""
    if isinstance(value, str):
        if value not in NAMED:
            raise ValueError(
                f"{key} must be one of {', '.join(map(repr, NAMED))}, or a function of the"
                f" request with a name (a def); got {value!r}."
            )
        return Grouping(value, NAMED[value])
    if callable(value):
        label = getattr(value, "__name__", "")
        if not isinstance(label, str) or not _LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(
                f"{key}: the function's name {label!r} is an invalid label name for the"
                " route label it fills; group by a function defined with def and a name"
                " of letters, digits and underscores (a lambda has none)."
            )
        return Grouping(None, label, value)
    raise TypeError(
        f"{key} must be one of {', '.join(map(repr, NAMED))}, or a function of the request;"
        f" got {value!r}."
    )
