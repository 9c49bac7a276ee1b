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

Inside a request of an app of the extension that traces, each send a
declaration records is also a span event on the current span
(:data:`EVENT`): the signal's name, the metric's, and the declared labels'
values; never the sender or its keyword arguments.
"""

from __future__ import annotations

import collections
import collections.abc as cabc
import re
import threading
import time
import typing as t

import flask

from . import labels as label_values
from .config import DURATION_BUCKETS
from .config import parse_buckets as valid_buckets
from .config import RESERVED_LABELS
from .forks import at_fork
from .metrics.names import HistogramSpec
from .state import EXTENSION_KEY
from .state import logger
from .state import START_KEY
from .tracing import spans as tracing

if t.TYPE_CHECKING:
    from .metrics.family import Family
    from .metrics.store import SignalStore
    from .state import State

LabelFunction = t.Callable[..., object]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: Starts of timed pairs kept waiting for their end; past this the oldest go.
MAX_PENDING = 10_000

#: The span event of a declared send inside a traced request. Only what the
#: declaration names, never the sender or its keyword arguments: the signal's
#: name, the metric's exposed name (a signal may be declared more than once),
#: and per declared label ``flask.signal.label.<label>``, its value after the
#: allow-list (past the cap too: the cap bounds series, an event adds none).
EVENT = "flask.signal"
EVENT_SIGNAL = "flask.signal.name"
EVENT_METRIC = "flask.signal.metric"
EVENT_LABEL = "flask.signal.label."

_MISSING = object()


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
        for name, values in allowed.items():
            _check_allow_list(name, values)
        self.names = tuple(functions)
        self._functions = tuple(functions.values())
        self._allowed = tuple(
            frozenset(str(v) for v in allowed[name]) if name in allowed else None
            for name in functions
        )

    def attributes(self, values: tuple[str, ...]) -> dict[str, str]:
        """A span event's attributes for recorded label values."""
        return {
            EVENT_LABEL + name: label_values.text(value)
            for name, value in zip(self.names, values, strict=True)
        }

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

    labels: _Labels
    #: The metric as exposed (a counter's with ``_total``), for span events.
    exposed_name: str

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

    def _event(self, signal: str, values: tuple[str, ...] = ()) -> None:
        """A span event for a send, inside a traced request of an app of this extension.

        :param values: the label values recorded; none for a start, or an end
            without one (its labels were never taken).
        """
        traced = _request_tracing(self._store)
        if traced is not None:  # only now: with tracing off, nothing is built
            attributes = {EVENT_SIGNAL: signal, EVENT_METRIC: self.exposed_name}
            if values:
                attributes.update(self.labels.attributes(values))
            tracing.span_event(traced, EVENT, attributes)


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
        # The client takes a counter's name with or without _total, and exposes it with.
        self.exposed_name = self.metric_name.removesuffix("_total") + "_total"
        self._family: Family[t.Any] = store.counter(
            self.metric_name,
            documentation or f"Sends of the signal {self.signal_name!r}.",
            self.labels.names,
        )

    def __call__(self, sender: object, **kwargs: t.Any) -> None:
        try:
            values = self.labels.values(sender, kwargs)
            self._family.child(values).inc()
            self._event(self.signal_name, values)
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
        # The config key's rules (sorted, no repeats, finite): the client
        # accepts duplicates and NaN, and would serve them as buckets.
        bounds = (
            DURATION_BUCKETS if buckets is None else valid_buckets("time(buckets=...)", buckets)
        )
        self.metric_name = _metric_name(
            name, f"flask_signal_{slug(self.start_name)}_to_{slug(self.end_name)}_duration_seconds"
        )
        self.exposed_name = self.metric_name
        self._key = key
        self._pending: collections.OrderedDict[t.Hashable, float] = collections.OrderedDict()
        self._lock = threading.Lock()
        at_fork(self._forked)
        spec = HistogramSpec(
            self.metric_name,
            documentation or f"Time from {self.start_name!r} to {self.end_name!r}.",
            tuple(self.labels.names),
            tuple(bounds),
        )
        self._family: Family[t.Any] = store.histogram(spec)
        self._no_start = store.unmatched.labels(self.metric_name, "no_start")
        self._dropped = store.unmatched.labels(self.metric_name, "dropped")

    def _forked(self) -> None:
        self._lock = threading.Lock()

    def on_start(self, sender: object, **kwargs: t.Any) -> None:
        try:
            key = self._key(sender, **kwargs)
            with self._lock:
                self._pending[key] = time.perf_counter()
                self._pending.move_to_end(key)
                if len(self._pending) > MAX_PENDING:
                    self._pending.popitem(last=False)
                    self._dropped.inc()
            self._event(self.start_name)
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
                self._event(self.end_name)
                return
            values = self.labels.values(sender, kwargs)
            self._family.child(values).observe(end - start)
            self._event(self.end_name, values)
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


def _check_allow_list(label: str, values: object) -> None:
    # A string is a collection too, of its characters: {"plan": "free"} would
    # allow "f", "r" and "e" and fold "free" into _OTHER.
    if isinstance(values, (str, bytes, bytearray)) or not isinstance(values, cabc.Iterable):
        raise TypeError(
            f"allowed[{label!r}] must be a collection of strings, e.g."
            f" {{{label!r}: ['free', 'pro']}}; got {values!r}."
        )


def _request_tracing(store: SignalStore) -> tracing.Tracing | None:
    """The request's tracing, when a send's span event may be due; else None.

    None outside a request, for an app of another extension (its own
    declarations make its events), for an app with tracing off, and in an
    excluded request (which gets no telemetry, as its flashes get none).
    """
    if not flask.has_request_context():
        return None
    state: State | None = flask.current_app.extensions.get(EXTENSION_KEY)
    if state is None or state.tracing is None or store.registry not in state.owned:
        return None
    if flask.request.environ.get(START_KEY, _MISSING) is None:
        return None
    return state.tracing
