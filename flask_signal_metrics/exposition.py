"""The ``/metrics`` view: content negotiation and compression over HTTP.

Flask-side only; the encoding itself is :func:`prometheus.render`.
"""

from __future__ import annotations

import gzip

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
