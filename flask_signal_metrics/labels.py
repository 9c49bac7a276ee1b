"""Label values: the low-cardinality form of what a request carries.

Pure functions and constants; no Flask, no metrics library. Nothing from the
raw path, query string, client address, headers or user data becomes a label:
the route is the URL rule's template, methods and schemes come from fixed sets.
"""

from __future__ import annotations

import collections.abc as cabc

#: The value every variable label takes in the one series that collects label
#: sets past a metric's cap (``SIGNAL_METRICS_MAX_SERIES``).
OVERFLOW = "__overflow__"

#: The method label for a method outside the known set, as the conventions say.
OTHER = "_OTHER"

#: The ``template`` label of a template rendered from a string.
STRING_TEMPLATE = "__string__"

#: Scheme label by ``request.scheme``; any other scheme (a forged forwarded
#: proto) is ``_OTHER``. Looked up inline on the request path.
SCHEMES = {"http": "http", "https": "https"}


def method_table(known: cabc.Iterable[str]) -> dict[str, str]:
    """Method label by request method; a method not in it is ``_OTHER``.

    A dict lookup is the cheapest normalisation on the request path. Werkzeug
    has already upper-cased the method.
    """
    return {m: m for m in known}


def error_type(status: int, exception: BaseException | None) -> str:
    """``error.type``: the escaped exception's class, else a 5xx code, else ``""``.

    4xx are the client's errors, not the server's, so they carry none.
    """
    if exception is not None:
        return exception_name(exception)
    return str(status) if status >= 500 else ""


def exception_name(exception: BaseException) -> str:
    """The exception's fully qualified class name (``app.errors.Gone``), as the
    conventions ask; a builtin's without ``builtins.``, as tracebacks print it."""
    kind = type(exception)
    module = kind.__module__
    if module in ("builtins", "__main__") or not isinstance(module, str):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def template(name: str | None) -> str:
    """The ``template`` label: the template's name, one value for string templates."""
    return name if name else STRING_TEMPLATE


def text(value: object) -> str:
    """A label value every exposition can encode: ``str(value)``, with each lone
    surrogate (bytes smuggled through ``surrogateescape``, a JSON ``"\\udcff"``)
    made U+FFFD. UTF-8 refuses to encode them, which would fail every scrape.
    """
    value = str(value)
    try:
        value.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    return value
