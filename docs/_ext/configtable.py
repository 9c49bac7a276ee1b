"""The configuration tables, made from ``flask_signal_metrics.config`` at build time.

``config.KEYS`` and ``config.ENVIRON`` hold each setting's parser, default and
description, so the table in the docs is the code's own list and cannot drift.
"""

from __future__ import annotations

import typing as t

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from flask_signal_metrics import config


def shown(value: object) -> str:
    """A default as the table shows it (long bucket lists abbreviated)."""
    if isinstance(value, frozenset):
        return ", ".join(sorted(value))
    if isinstance(value, tuple) and len(value) > 4:
        first, second, last = (number(v) for v in (value[0], value[1], value[-1]))
        return f"{first}, {second}, … {last} ({len(value)} bounds)"
    if value == ():
        return "none"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def rows(keys: t.Mapping[str, config.Key]) -> list[tuple[str, str, str]]:
    """(name, default, description) for each key, in the registry's order."""
    return [(name, shown(config.default(key)), key.description) for name, key in keys.items()]


def inline(text: str) -> list[nodes.Node]:
    """Text with its ``literal`` parts as literal nodes (the descriptions' only markup)."""
    parts = text.split("``")  # the odd parts are the literal ones
    return [
        nodes.literal(part, part) if n % 2 else nodes.Text(part)
        for n, part in enumerate(parts)
        if part
    ]


def table(keys: t.Mapping[str, config.Key], first: str) -> nodes.table:
    """The keys as a three-column table: name, default, meaning."""
    group = nodes.tgroup(cols=3)
    group += [nodes.colspec(colwidth=width) for width in (30, 20, 50)]
    head, body = nodes.thead(), nodes.tbody()
    head += line([nodes.Text(first)], [nodes.Text("default")], [nodes.Text("meaning")])
    for name, value, description in rows(keys):
        body += line(
            [nodes.literal(name, name)], [nodes.literal(value, value)], inline(description)
        )
    group += [head, body]
    return nodes.table("", group)


def line(*cells: list[nodes.Node]) -> nodes.row:
    row = nodes.row()
    for content in cells:
        entry = nodes.entry()
        entry += nodes.paragraph("", "", *content)
        row += entry
    return row


class _Table(SphinxDirective):
    keys: t.ClassVar[t.Mapping[str, config.Key]]
    first: t.ClassVar[str]

    def run(self) -> list[nodes.Node]:
        return [table(self.keys, self.first)]


class ConfigTable(_Table):
    """``config-table``: every ``SIGNAL_METRICS_*`` key."""

    keys = config.KEYS
    first = "key"


class EnvironTable(_Table):
    """``environ-table``: the standard variables read in ``init_app``."""

    keys = config.ENVIRON
    first = "variable"


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("config-table", ConfigTable)
    app.add_directive("environ-table", EnvironTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
