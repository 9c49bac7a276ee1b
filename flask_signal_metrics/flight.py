"""Single flight: concurrent calls for the same key share one call's result.

A scrape storm (many scrapers, or one retrying) made every scrape render the
whole exposition again, each on its own thread. With :class:`SingleFlight`
the first caller renders; callers arriving while it renders wait for that
result, up to a bound, and get the same bytes. Nothing is kept once the call
is done: a caller arriving after it starts a call of its own, so a later
scrape always reads the counts as they are then.
"""

from __future__ import annotations

import threading
import typing as t

from .forks import at_fork

K = t.TypeVar("K", bound=t.Hashable)
V = t.TypeVar("V")


class FlightTimeout(Exception):
    """The call this caller joined did not finish within its wait."""


class _Flight(t.Generic[V]):
    """One call in progress: its result or error once ``done`` is set."""

    __slots__ = ("done", "error", "joined", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        #: The callers waiting for it.
        self.joined = 0
        self.result: V | None = None
        self.error: BaseException | None = None


class SingleFlight(t.Generic[K, V]):
    """Share one call of ``make`` among the callers of :meth:`run` with equal keys."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[K, _Flight[V]] = {}
        at_fork(self._forked)

    def _forked(self) -> None:
        # A child has none of its parent's calling threads: their calls never end there.
        self._lock = threading.Lock()
        self._flights = {}

    def run(self, key: K, make: t.Callable[[], V], wait: float) -> V:
        """``make()``'s result, or that of the call for ``key`` already under way.

        :param wait: the most seconds to wait for another caller's call.
        :raises FlightTimeout: that call took longer than ``wait``.
        :raises BaseException: what the call raised, also in the callers that joined it.
        """
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                flight.joined += 1
        if not leader:
            if not flight.done.wait(wait):
                raise FlightTimeout(f"a render in progress took more than {wait:g} s")
            if flight.error is not None:
                raise flight.error
            return t.cast(V, flight.result)
        try:
            flight.result = make()
        except BaseException as error:
            flight.error = error
            raise
        finally:
            # Unlisted before it is done: a caller from now on makes a new call.
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.result

    def waiting(self) -> int:
        """How many callers wait for a call under way (joined, whether or not still waiting)."""
        with self._lock:
            return sum(flight.joined for flight in self._flights.values())
