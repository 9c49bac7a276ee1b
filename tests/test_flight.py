from __future__ import annotations

import threading
import time
import typing as t

import pytest

from flask_signal_metrics.flight import FlightTimeout
from flask_signal_metrics.flight import SingleFlight


def _joined(flights: SingleFlight[str, t.Any], n: int) -> None:
    deadline = time.monotonic() + 10
    while flights.waiting() < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flights.waiting() == n


def test_callers_that_joined_get_the_error_and_the_next_call_is_new() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = threading.Event()
    calls: list[int] = []

    def failing() -> int:
        calls.append(1)
        release.wait(10)
        raise ValueError("collector broke")

    errors: list[BaseException] = []

    def call() -> None:
        try:
            flights.run("key", failing, 10)
        except ValueError as error:
            errors.append(error)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(3)]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    for thread in threads[1:]:
        thread.start()
    _joined(flights, 2)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert [str(error) for error in errors] == ["collector broke"] * 3
    assert flights.run("key", lambda: 7, 10) == 7


def test_a_caller_waits_no_longer_than_its_bound() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = threading.Event()
    started = threading.Event()

    def slow() -> int:
        started.set()
        release.wait(10)
        return 1

    leader = threading.Thread(target=lambda: flights.run("key", slow, 10), daemon=True)
    leader.start()
    assert started.wait(10)
    try:
        with pytest.raises(FlightTimeout):
            flights.run("key", lambda: 2, 0.05)
        assert flights.run("other", lambda: 3, 0.05) == 3  # another key: its own call
    finally:
        release.set()
        leader.join(10)
