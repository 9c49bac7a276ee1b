"""Metrics for the app's own blinker signals, declared on the extension.

Flask users declare signals of their own with a blinker ``Namespace``
(``model-saved``, ``user-registered``, ``access-event``) and connect
receivers that log and audit. A declaration here turns such a signal into a
counter, or a pair of signals into a duration histogram:

.. code-block:: python

    signal_metrics.count(user_registered, labels={"plan": lambda sender, **kw: kw["plan"]},
                         allowed={"plan": {"free", "pro"}})
    signal_metrics.time(job_started, job_finished, key=lambda sender, **kw: kw["job_id"])

Names: ``flask_signal_<name>_total`` for a count and
``flask_signal_<start>_to_<end>_duration_seconds`` for a pair, where a
signal's name is lower-cased and every run of other characters than letters
and digits becomes ``_`` (``model-saved`` → ``model_saved``); ``name=``
overrides. Label values come from the user's functions, called with the
signal's sender and keyword arguments; a value outside the label's allow-list
becomes ``_OTHER``, and without an allow-list the label set is capped like
every metric of the extension.

The declarations are the receivers: held strongly, they never raise into the
sender, and a failure is logged once per cause and counted in
``flask_signal_metrics_signal_errors_total{signal}``.
"""

from __future__ import annotations

import collections
import collections.abc as cabc
import re
import threading
import time
import typing as t

from . import labels as label_values
from .config import DURATION_BUCKETS
from .config import RESERVED_LABELS
from .state import logger

if t.TYPE_CHECKING:
    from .prometheus import Family
    from .prometheus import SignalStore

LabelFunction = t.Callable[..., object]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: Starts of timed pairs kept waiting for their end; past this the oldest go.
MAX_PENDING = 10_000


def slug(signal_name: str) -> str:
    """``model-saved`` → ``model_saved``: the signal's part of a metric name."""
    return re.sub(r"[^a-z0-9]+", "_", signal_name.lower()).strip("_")


def signal_name(signal: t.Any, option: str) -> str:
    name = getattr(signal, "name", None)
    if not isinstance(name, str) or not slug(name):
        raise ValueError(
            f"{option} is an anonymous signal; give it a name (Namespace().signal('job-done'))"
            " or pass name=."
        )
    return name


class _Labels:
    """Label names, their functions and allow-lists, validated at declaration."""

    def __init__(
        self,
        functions: cabc.Mapping[str, LabelFunction] | None,
        allowed: cabc.Mapping[str, cabc.Collection[str]] | None,
    ) -> None:
        functions = dict(functions or {})
        allowed = dict(allowed or {})
        for name, function in functions.items():
            if not _LABEL.match(name) or name.startswith("__") or name in RESERVED_LABELS:
                raise ValueError(
                    f"labels= has the label name {name!r}; use letters, digits and underscores,"
                    f" not starting with a digit or '__', and none of {sorted(RESERVED_LABELS)}."
                )
            if not callable(function):
                raise TypeError(
                    f"labels[{name!r}] must be a function of (sender, **kwargs); got {function!r}."
                )
        unknown = set(allowed) - set(functions)
        if unknown:
            raise ValueError(
                f"allowed= names {sorted(unknown)}, which labels= does not declare; declare a"
                " function for each label you bound."
            )
        self.names = tuple(functions)
        self._functions = tuple(functions.values())
        self._allowed = tuple(
            frozenset(str(v) for v in allowed[name]) if name in allowed else None
            for name in functions
        )

    def values(self, sender: object, kwargs: dict[str, t.Any]) -> tuple[str, ...]:
        values = []
        for function, allowed in zip(self._functions, self._allowed, strict=True):
            value = str(function(sender, **kwargs))
            if allowed is not None and value not in allowed:
                value = label_values.OTHER
            values.append(value)
        return tuple(values)


class _Receiver:
    """What every declaration shares: never raising, failures counted and logged once."""

    def __init__(self, store: SignalStore) -> None:
        self._store = store
        self._logged: set[tuple[str, str]] = set()

    def _failed(self, signal: str, error: Exception) -> None:
        try:
            self._store.errors.labels(signal).inc()
            cause = (signal, type(error).__qualname__)
            if cause not in self._logged and len(self._logged) < 1000:
                self._logged.add(cause)
                logger.error(
                    "flask-signal-metrics: recording the %s signal failed; the sender is"
                    " unaffected. Further failures with this cause are only counted in"
                    " flask_signal_metrics_signal_errors_total.",
                    signal,
                    exc_info=error,
                )
        except Exception:
            pass  # nothing may escape into the sender


class Counted(_Receiver):
    """A counter of a signal's sends: ``flask_signal_<name>_total``."""

    def __init__(
        self,
        store: SignalStore,
        signal: t.Any,
        *,
        name: str | None,
        documentation: str | None,
        labels: cabc.Mapping[str, LabelFunction] | None,
        allowed: cabc.Mapping[str, cabc.Collection[str]] | None,
    ) -> None:
        super().__init__(store)
        self.signal_name = signal_name(signal, "count()")
        self.labels = _Labels(labels, allowed)
        self.metric_name = _metric_name(name, f"flask_signal_{slug(self.signal_name)}")
        self._family: Family[t.Any] = store.counter(
            self.metric_name,
            documentation or f"Sends of the signal {self.signal_name!r}.",
            self.labels.names,
        )

    def __call__(self, sender: object, **kwargs: t.Any) -> None:
        try:
            self._family.child(self.labels.values(sender, kwargs)).inc()
        except Exception as e:
            self._failed(self.signal_name, e)


class Timed(_Receiver):
    """The time between a start and an end signal, matched by a key.

    ``flask_signal_<start>_to_<end>_duration_seconds``; label values are taken
    from the end's sender and keyword arguments.
    """

    def __init__(
        self,
        store: SignalStore,
        start: t.Any,
        end: t.Any,
        *,
        key: LabelFunction,
        name: str | None,
        documentation: str | None,
        labels: cabc.Mapping[str, LabelFunction] | None,
        allowed: cabc.Mapping[str, cabc.Collection[str]] | None,
        buckets: cabc.Sequence[float] | None,
    ) -> None:
        super().__init__(store)
        if not callable(key):
            raise TypeError(f"key= must be a function of (sender, **kwargs); got {key!r}.")
        self.start_name = signal_name(start, "time()'s start")
        self.end_name = signal_name(end, "time()'s end")
        self.labels = _Labels(labels, allowed)
        self.metric_name = _metric_name(
            name, f"flask_signal_{slug(self.start_name)}_to_{slug(self.end_name)}_duration_seconds"
        )
        self._key = key
        self._pending: collections.OrderedDict[t.Hashable, float] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._family: Family[t.Any] = store.histogram(
            self.metric_name,
            documentation or f"Time from {self.start_name!r} to {self.end_name!r}.",
            self.labels.names,
            tuple(buckets) if buckets is not None else DURATION_BUCKETS,
        )
        self._no_start = store.unmatched.labels(self.metric_name, "no_start")
        self._dropped = store.unmatched.labels(self.metric_name, "dropped")

    def on_start(self, sender: object, **kwargs: t.Any) -> None:
        try:
            key = self._key(sender, **kwargs)
            with self._lock:
                self._pending[key] = time.perf_counter()
                self._pending.move_to_end(key)
                if len(self._pending) > MAX_PENDING:
                    self._pending.popitem(last=False)
                    self._dropped.inc()
        except Exception as e:
            self._failed(self.start_name, e)

    def on_end(self, sender: object, **kwargs: t.Any) -> None:
        try:
            end = time.perf_counter()
            key = self._key(sender, **kwargs)
            with self._lock:
                start = self._pending.pop(key, None)
            if start is None:
                self._no_start.inc()
                return
            self._family.child(self.labels.values(sender, kwargs)).observe(end - start)
        except Exception as e:
            self._failed(self.end_name, e)


def _metric_name(given: str | None, default: str) -> str:
    if given is None:
        return default
    if not isinstance(given, str) or not _NAME.match(given):
        raise ValueError(
            f"name= must be a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*); got {given!r}."
        )
    return given
