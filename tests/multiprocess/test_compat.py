"""The prometheus_client private names that multiprocess/_compat.py relies on, and its fallbacks.

The first tests fail when a client release changes what the fast paths
assume; the others check that each fallback gives the same answers.
"""

from __future__ import annotations

import struct
import typing as t
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Histogram
from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict

from flask_signal_metrics.metrics.names import HistogramSpec
from flask_signal_metrics.multiprocess import _compat
from flask_signal_metrics.multiprocess.files import FileHistogram


@pytest.fixture
def file(tmp_path: Path) -> t.Iterator[MmapedDict]:
    made = MmapedDict(str(tmp_path / "counter_1.db"))  # type: ignore[no-untyped-call]
    yield made
    _compat.close(made)


def _metrics() -> list[tuple[t.Any, bool]]:
    registry = CollectorRegistry()
    return [
        (Counter("plain", "d", registry=registry), False),
        (Counter("labelled", "d", ("a",), registry=registry), True),
        (Histogram("timed", "d", registry=registry), False),
        (Histogram("timed_by", "d", ("a", "b"), registry=registry), True),
        (FileHistogram(HistogramSpec("ours", "d", (), (1.0,)), registry), False),
        (FileHistogram(HistogramSpec("ours_by", "d", ("a",), (1.0,)), registry), True),
    ]


# -- the private layout, as the fast paths assume it --------------------------------


def test_the_client_decides_its_mode_in_values_value_class() -> None:
    assert isinstance(values.ValueClass, type) or callable(values.ValueClass)
    assert values.MutexValue is not None
    assert values.ValueClass is values.MutexValue  # the tests run in one process


def test_a_client_metric_keeps_its_label_names_in_labelnames() -> None:
    for metric, labelled in _metrics():
        names = metric.labelnames if isinstance(metric, FileHistogram) else metric._labelnames
        assert isinstance(names, tuple)
        assert bool(names) is labelled


def test_a_values_file_is_a_map_of_native_doubles_at_positions(file: MmapedDict) -> None:
    number, timestamp = file.read_value("jobs")  # type: ignore[no-untyped-call]
    assert (number, timestamp) == (0.0, 0.0)
    positions = file._positions
    assert isinstance(positions, dict) and isinstance(positions["jobs"], int)
    assert positions["jobs"] % 8 == 0
    memoryview(file._m).cast("d")[positions["jobs"] // 8] = 2.5
    assert file.read_value("jobs")[0] == 2.5  # type: ignore[no-untyped-call]
    # The value, then its timestamp, both native doubles.
    raw = bytes(file._m[positions["jobs"] : positions["jobs"] + 16])
    assert struct.unpack("dd", raw) == (2.5, 0.0)
    assert file._f is not None


def test_a_grown_file_is_mapped_anew(file: MmapedDict) -> None:
    before = file._m
    for n in range(12_000):
        file.read_value(f"{n:05d}" + "k" * 100)  # type: ignore[no-untyped-call]
    assert file._m is not before
    assert _compat.current_map(file) is file._m


def test_the_fast_paths_take_the_private_layout(file: MmapedDict) -> None:
    _compat.make_key(file, "jobs")
    assert _compat.position(file, "jobs") == file._positions["jobs"]
    view = _compat.doubles(file)
    assert view is not None and view.obj is file._m
    view.release()


# -- the fallbacks, where the layout is not as expected ---------------------------


def test_without_value_class_the_mode_is_the_environments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = _compat.client_writes_files()
    monkeypatch.delattr(values, "ValueClass")
    assert _compat.client_writes_files() is fast


@pytest.mark.parametrize("index", range(len(_metrics())))
def test_without_labelnames_labels_are_told_by_the_samples(
    monkeypatch: pytest.MonkeyPatch, index: int
) -> None:
    metric, labelled = _metrics()[index]
    assert _compat.has_labels(metric) is labelled
    if isinstance(metric, FileHistogram):
        return  # ours: its public labelnames, no fallback
    monkeypatch.setattr(_compat, "_LABELNAMES", "_renamed")  # a release that renamed it
    assert _compat.has_labels(metric) is labelled


def test_without_positions_or_map_the_write_goes_through_write_value(
    file: MmapedDict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _compat.make_key(file, "jobs")
    monkeypatch.setattr(file, "_positions", None)
    monkeypatch.setattr(file, "_m", None)
    assert _compat.position(file, "jobs") == -1
    assert _compat.doubles(file) is None
    assert _compat.current_map(file) is None
    monkeypatch.undo()
    _compat.write_value(file, "jobs", 4.0)
    assert file.read_value("jobs") == (4.0, 0.0)  # type: ignore[no-untyped-call]
    assert _compat.read_file(str(tmp_path / "counter_1.db")) == [("jobs", 4.0, 0.0)]


def test_a_file_whose_map_has_a_view_left_still_closes_its_descriptor(
    file: MmapedDict,
) -> None:
    _compat.make_key(file, "jobs")
    view = _compat.doubles(file)
    assert view is not None
    _compat.close(file)  # BufferError inside: the map stays, the file closes
    assert file._f.closed
    view.release()
