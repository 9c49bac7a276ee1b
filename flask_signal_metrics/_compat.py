"""The one place private names of Flask's and Werkzeug's are read.

The current request's context, a response's status code, and whether an app
still takes routes.

The receivers read the context several times per request, for its request
and to tell this request (or a copied context of it) from another. Where
Flask has it, its own context variable ``flask.globals._cv_request`` is read:
a plain ``ContextVar.get``. Elsewhere :class:`PublicContext` gets the same
object through Flask's public proxies: ``request_ctx`` up to Flask 3.1, and
``app_ctx`` on a Flask whose app context holds the request (the request
context merged into it). tests/test_compat.py checks that this Flask still
has the fast path and that both give the same object.
"""

from __future__ import annotations

import operator
import typing as t

import flask
import flask.ctx
import flask.globals
from werkzeug import wrappers

if t.TYPE_CHECKING:
    from flask.ctx import RequestContext
    from werkzeug.local import LocalProxy
    from werkzeug.wrappers import Response


class ContextVariable(t.Protocol):
    """What the receivers call: ``get()`` (raises outside a request) or ``get(None)``."""

    @t.overload
    def get(self) -> RequestContext: ...
    @t.overload
    def get(self, default: None, /) -> RequestContext | None: ...


class PublicContext:
    """The current request's context through Flask's public API."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        # The merged design's context knows whether it has a request; reading
        # ``request_ctx`` there would warn that it is deprecated.
        merged = hasattr(flask.ctx.AppContext, "has_request")
        proxy = t.cast(
            "LocalProxy[RequestContext]",
            flask.globals.app_ctx if merged else flask.globals.request_ctx,
        )
        self._current: t.Callable[[], RequestContext] = proxy._get_current_object

    def get(self, *default: None) -> t.Any:
        if default and not flask.has_request_context():
            return None
        return self._current()


def select() -> tuple[ContextVariable, bool]:
    """The context variable to read, and whether it is Flask's own (the fast path)."""
    try:
        from flask.globals import _cv_request
    except ImportError:  # a Flask without it: the public way
        return PublicContext(), False
    return _cv_request, True


current_context, FAST = select()


#: ``response.status_code``: Werkzeug's property returns its private
#: ``_status_code``, read here where it is an int (the property is a Python
#: call); else the public property. tests/test_compat.py fails
#: when Werkzeug drops the name.
status_code: t.Callable[[Response], int] = operator.attrgetter(
    "_status_code"
    if isinstance(getattr(wrappers.Response(status=418), "_status_code", None), int)
    else "status_code"
)


def handled_a_request(app: flask.Flask) -> bool:
    """Whether ``app`` has handled a request, after which Flask refuses new routes.

    Flask's own flag (``_got_first_request``), so that set-up can refuse
    before it changes anything; False if it moved, and ``add_url_rule``
    refuses as before. tests/test_compat.py fails when Flask drops it.
    """
    return getattr(app, "_got_first_request", False) is True
