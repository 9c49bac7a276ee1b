from __future__ import annotations

import os
import typing as t
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from flask_signal_metrics.multiprocess import writer
from flask_signal_metrics.multiprocess._compat import doubles
from flask_signal_metrics.multiprocess.writer import FileKeys
from flask_signal_metrics.multiprocess.writer import ProcessFiles
from flask_signal_metrics.multiprocess.writer import Value
from flask_signal_metrics.multiprocess.writer import writes_directly


def _add(value: Value, amount: float) -> None:
    value.add(amount)


def test_values_written_into_the_map_are_what_the_client_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Request values are written straight into MmapedDict's map (its _m and
    # _positions): on the installed client they must read back as its own
    # writes do, also once the file grew past its first 1 MiB and was mapped anew.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    files = ProcessFiles()
    keys = [f"{n:05d}" + "k" * 100 for n in range(12_000)]
    with files.lock:
        first = files.value("counter", keys[0]).view
        for n, key in enumerate(keys):
            _add(files.value("counter", key), n)
        _add(files.value("counter", keys[0]), 0.5)  # made before the file grew
        buckets, total = files.histogram(FileKeys(["le=1", "le=+Inf"], "sum"))
        _add(buckets[1], 1.0)
        _add(total, 2.5)
    assert files._direct is True  # checked on a scratch file at the first open
    # The values moved to a view of the grown file's new map; the old views
    # were let go (their maps and descriptors freed).
    counter_map = files._files["counter"]._m
    assert all(files.values[key].view is files._views["counter"] for key in keys)
    assert files._views["counter"].obj is counter_map and len(files._views) == 2
    with pytest.raises(ValueError, match="released"):
        t.cast(memoryview, first).obj  # noqa: B018
    files.forget()  # closes them
    (counters,) = tmp_path.glob("counter_requests_*.db")
    assert counters.stat().st_size > 1 << 20
    read = {k: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(counters))}  # type: ignore[no-untyped-call]
    assert read == {key: float(n) for n, key in enumerate(keys)} | {keys[0]: 0.5}
    (histogram,) = tmp_path.glob("histogram_requests_*.db")
    read = {k: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(histogram))}  # type: ignore[no-untyped-call]
    assert read == {"le=1": 0.0, "le=+Inf": 1.0, "sum": 2.5}
    assert list(tmp_path.glob("*.tmp")) == []  # the scratch file is gone


def test_a_fork_while_a_view_is_being_made_leaves_the_child_files_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A view of a map that no table holds (another thread was making it when
    # the process forked: a review's repro) keeps that map from closing; the
    # child still gets a new lock and tables, and records into its own files.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    files = ProcessFiles()
    files.lock.acquire()  # held by the parent's thread, as at the fork
    _add(files.value("counter", "jobs"), 2.0)
    stray = t.cast(memoryview, doubles(files._files["counter"]))
    monkeypatch.setattr(os, "getpid", lambda: 1)  # the child's pid, for its files
    files.forget()  # what the child's fork handler does
    assert files.lock.acquire(timeout=1)
    try:
        assert files.values == {} and files._files == {}
        _add(files.value("counter", "jobs"), 1.0)
    finally:
        files.lock.release()
        files.forget()
        stray.release()
    monkeypatch.undo()
    read = {
        path.name: [(k, v) for k, v, _, _ in MmapedDict.read_all_values_from_file(str(path))]  # type: ignore[no-untyped-call]
        for path in tmp_path.glob("counter_requests_*.db")
    }
    parent = f"counter_requests_{os.getpid()}.db"
    assert read == {parent: [("jobs", 2.0)], "counter_requests_1.db": [("jobs", 1.0)]}


def _shifted(file: MmapedDict) -> memoryview[float]:
    # A layout with the timestamp first: the value lands where the client
    # reads the timestamp.
    return memoryview(file._m)[8:-8].cast("d")


def _moved(file: MmapedDict) -> memoryview[float]:
    raise AttributeError("'MmapedDict' object has no attribute '_m'")


@pytest.mark.parametrize("doubles", [_shifted, _moved], ids=["another-layout", "moved-attribute"])
def test_a_client_whose_map_is_not_as_expected_gets_its_own_writes(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    doubles: t.Callable[[MmapedDict], memoryview[float]],
) -> None:
    # A client release that moved MmapedDict's map or changed its layout:
    # the per-process check sees it, and every value goes through write_value.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(writer, "doubles", doubles)
    assert not writes_directly(str(tmp_path))
    files = ProcessFiles()
    with files.lock:
        jobs = files.value("counter", "jobs")
        _add(jobs, 2.0)
        _add(jobs, 1.0)
        buckets, total = files.histogram(FileKeys(["le=1", "le=+Inf"], "sum"))
        _add(buckets[1], 1.0)
        _add(total, 2.5)
    assert files._direct is False
    files.forget()
    read: dict[str, float] = {}
    for path in sorted(tmp_path.glob("*_requests_*.db")):
        read |= {k: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(path))}  # type: ignore[no-untyped-call]
    assert read == {"jobs": 3.0, "le=1": 0.0, "le=+Inf": 1.0, "sum": 2.5}
    assert list(tmp_path.glob("*.tmp")) == []


def test_the_scratch_file_is_removed_when_the_check_fails_early(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class FailingMap(MmapedDict):
        """Made its file, then failed (as when mmap itself fails)."""

        def __init__(self, path: str) -> None:
            super().__init__(path)  # type: ignore[no-untyped-call]
            self.close()  # type: ignore[no-untyped-call]
            raise OSError("mmap failed")

    monkeypatch.setattr(writer, "MmapedDict", FailingMap)
    assert not writes_directly(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
