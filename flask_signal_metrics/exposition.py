"""The ``/metrics`` view: content negotiation and compression over HTTP.

Flask-side only; the encoding itself is :func:`prometheus.render`.
"""

from __future__ import annotations

import gzip
import hmac

from flask import current_app
from flask import request
from flask import Response

from . import prometheus
from .state import exclude
from .state import get_state

#: Bodies shorter than this are sent as they are: gzip would not pay.
_GZIP_MIN_BYTES = 1024


@exclude
def metrics_view() -> Response:
    """Serve the app's metrics in the format the scraper prefers.

    The ``Accept`` header is ranked by its q-values (q=0 means "not this"),
    which ``choose_encoder`` alone ignores; a header that cannot be parsed
    gets the Prometheus text format, never an error. ``?name[]=...`` limits
    the answer to those metric families, as prometheus_client's own exporter
    does.
    """
    state = get_state(current_app)
    denied = _check_credentials(state.settings.basic_auth, state.settings.bearer_token)
    if denied is not None:
        return denied
    ranked = sorted(request.accept_mimetypes, key=lambda item: -item[1])
    accepted = [media_range for media_range, quality in ranked if quality > 0]
    names = request.args.getlist("name[]")
    body, content_type = prometheus.render(state.collectors, accepted, names)
    response = Response(body, content_type=content_type)
    response.vary.add("Accept")
    response.vary.add("Accept-Encoding")
    response.cache_control.no_store = True
    if len(body) >= _GZIP_MIN_BYTES and request.accept_encodings["gzip"] > 0:
        response.set_data(gzip.compress(body, compresslevel=6))
        response.content_encoding = "gzip"
    return response


def _check_credentials(basic: tuple[str, str] | None, token: str | None) -> Response | None:
    """None when the request may read the metrics, else the 401 to send.

    Credentials are compared with ``hmac.compare_digest``, in constant time.
    """
    if basic is None and token is None:
        return None
    given = request.authorization
    if given is not None:
        if basic is not None and given.type == "basic":
            user_ok = _same(given.username or "", basic[0])
            password_ok = _same(given.password or "", basic[1])
            if user_ok & password_ok:
                return None
        if token is not None and given.type == "bearer" and _same(given.token or "", token):
            return None
    challenges = []
    if basic is not None:
        challenges.append('Basic realm="metrics", charset="UTF-8"')
    if token is not None:
        challenges.append('Bearer realm="metrics"')
    response = Response("Unauthorized\n", status=401, mimetype="text/plain")
    response.headers["WWW-Authenticate"] = ", ".join(challenges)
    return response


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
