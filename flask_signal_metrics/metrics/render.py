"""Rendering an exposition: content negotiation, and the client's encoder with our rows."""

from __future__ import annotations

import collections.abc as cabc

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..config import LOCK_TIMEOUT
from ..multiprocess.directory import exposed
from .registry import Union
from .text import Collected
from .text import Format
from .text import make_format
from .text import RENDERING
from .text import Rows

_OPENMETRICS = "application/openmetrics-text"
_TEXT = "text/plain"
_ANY = ("*/*", "text/*")


def render(
    collectors: cabc.Sequence[Collector],
    accepted: cabc.Iterable[str],
    names: cabc.Iterable[str] = (),
    lock_timeout: float = LOCK_TIMEOUT,
) -> tuple[bytes, str]:
    """Encode ``collectors`` in the best format among ``accepted`` media ranges.

    :param accepted: the client's acceptable media ranges with their
        parameters, most preferred first (q=0 already removed).
        ``choose_encoder`` ignores q-values and picks OpenMetrics whenever it is
        listed at all, so the preference order is decided by the caller and
        each range is handed to it alone. Anything it cannot use falls back to
        the Prometheus text format 0.0.4, as the content-negotiation spec says.
    :param names: only these metric families (``/metrics?name[]=...``).
    :param lock_timeout: how long to wait for the multiprocess directory's lock.
    :returns: the body and its ``Content-Type``: what the client's encoder
        writes, the request histograms written by :class:`~.text.HistogramLines`.
    :raises LockUnavailable: in multiprocess mode, the lock was not had in time.
    """
    encoder, content_type = choose_encoder("")
    for media_range in accepted:
        base = media_range.split(";", 1)[0].strip().lower()
        if base in _ANY:
            break
        if base not in (_OPENMETRICS, _TEXT):
            continue
        if base == _OPENMETRICS and not _writable_openmetrics(media_range):
            continue
        try:
            chosen, chosen_type = choose_encoder(media_range)
        except Exception:  # a malformed version= parameter
            continue
        encoder, content_type = chosen, chosen_type
        break
    form = make_format(content_type, encoder)
    return encode(form, Union(exposed(collectors, lock_timeout), frozenset(names))), content_type


def _writable_openmetrics(media_range: str) -> bool:
    """Whether the OpenMetrics version asked for (none: any) is 1.x, which we write.

    Decided here rather than left to ``choose_encoder``, whose answer for
    other versions differs between client releases.
    """
    for param in media_range.split(";")[1:]:
        name, _, version = param.partition("=")
        if name.strip().lower() == "version":
            return version.strip().split(".")[0] == "1"
    return True


def encode(form: Format, union: Union) -> bytes:
    """The exposition of ``union`` in ``form``: the client's, our rows written by their lines."""
    token = RENDERING.set(form)
    try:
        metrics = list(union.collect())
    finally:
        RENDERING.reset(token)
    if not any(isinstance(metric, Rows) for metric in metrics):
        return form.encoder(Collected(metrics))
    chunks: list[bytes] = []
    theirs: list[Metric] = []
    numbers: dict[int, str] = {}
    for metric in metrics:
        if not isinstance(metric, Rows):
            theirs.append(metric)
            continue
        if theirs:
            body = form.encoder(Collected(theirs))
            chunks.append(body[: len(body) - len(form.trailer)])
            theirs = []
        chunks += metric.lines.write(metric.rows, numbers)
    if theirs:
        chunks.append(form.encoder(Collected(theirs)))
    else:
        chunks.append(form.trailer)
    return b"".join(chunks)
