"""Labelled metrics with a capped child cache, and the in-flight groups of one process."""

from __future__ import annotations

import collections.abc as cabc
import itertools
import threading
import typing as t

from prometheus_client import Counter

from .. import labels
from ..forks import at_fork
from ..multiprocess._compat import has_labels
from .names import OVERFLOW_KEY
from .names import RequestKey


class Child(t.Protocol):
    """What :class:`Family` holds: a prometheus_client metric, or one shaped like it."""

    def labels(self, *values: str) -> t.Any: ...


M = t.TypeVar("M", bound=Child)


class Family(t.Generic[M]):
    """One labelled prometheus_client metric whose label sets are capped.

    The children are cached in a dict keyed by the label tuple (``labels()``
    validates and locks on every call), and the same dict bounds the series
    count. Past :attr:`cap` label sets, new ones are recorded in one series
    whose variable labels are all :data:`labels.OVERFLOW`, and each such
    recording is counted in ``flask_signal_metrics_series_overflow_total``.
    """

    __slots__ = (
        "__weakref__",
        "_children",
        "_folded",
        "_lock",
        "_metric",
        "_overflowed",
        "_static",
        "cap",
    )

    def __init__(self, metric: M, static: tuple[str, ...], cap: int, overflowed: Counter) -> None:
        self._metric = metric
        self._static = static
        #: The most label sets of its own; may be changed (declared metrics).
        self.cap = cap
        self._overflowed = overflowed
        self._children: dict[tuple[str, ...], M] = {}
        if not has_labels(metric):
            self._children[()] = metric  # a metric without labels is its own series
        #: The overflow series, made at the first overflow.
        self._folded: M | None = None
        self._lock = threading.Lock()
        at_fork(self._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()

    def kept(self, key: tuple[str, ...]) -> M | None:
        """The series of ``key`` if it has one of its own (not the overflow series)."""
        return self._children.get(key)

    def child(self, key: tuple[str, ...]) -> M:
        """The series for ``key`` (label values without the static labels)."""
        found = self._children.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._children.get(key)
            if found is not None:
                return found
            if len(self._children) < self.cap:
                values = map(labels.text, key)  # once per label set: the cache holds ``key``
                made = t.cast(M, self._metric.labels(*values, *self._static))  # same type
                self._children[key] = made
                return made
        # Folded label sets are not remembered: remembering them is the
        # unbounded memory the cap exists to prevent.
        self._overflowed.inc()
        folded = self._folded
        if folded is None:
            overflow = (labels.OVERFLOW,) * len(key)
            folded = self._folded = t.cast(M, self._metric.labels(*overflow, *self._static))
        return folded


class Group:
    """The requests of one (method, scheme): their in-flight count.

    ``started`` and ``finished`` are ``itertools.count``s: ``next()`` on one
    is a single atomic C call under the GIL, so neither end of a request
    takes a lock. In flight = started - finished.

    A count is read with ``next()`` too, which returns how many calls came
    before it, the earlier reads included: :meth:`active` counts its own
    reads and takes them off.
    """

    __slots__ = ("_reads", "finished", "started")

    def __init__(self) -> None:
        self.started = itertools.count()
        self.finished = itertools.count()
        self._reads = 0

    def active(self) -> int:
        """Requests started and not finished (callers take turns: hold the stats' lock)."""
        finished = next(self.finished) - self._reads  # first: never more finished than started
        started = next(self.started) - self._reads
        self._reads += 1
        return started - finished


S = t.TypeVar("S")


def capped(
    table: dict[RequestKey, S],
    key: tuple[str, str, str, str, str],
    lock: threading.Lock,
    cap: int,
    overflowed: cabc.Sequence[Counter],
    make: t.Callable[[RequestKey], S],
) -> S:
    """A request series not yet in ``table``: made, or the overflow series past ``cap``."""
    with lock:
        found = table.get(key)  # type: ignore[call-overload]  # a plain tuple equals its RequestKey
        if found is not None:
            return t.cast(S, found)
        named = RequestKey(*key)
        if len(table) >= cap:
            # Folded label sets are not remembered: remembering them is the
            # unbounded memory the cap prevents.
            for counter in overflowed:
                counter.inc()
            named = OVERFLOW_KEY
            found = table.get(named)
            if found is not None:
                return found
        made = table[named] = make(named)
        return made
