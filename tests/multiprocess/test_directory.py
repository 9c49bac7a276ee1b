from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import REGISTRY
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.mmap_dict import MmapedDict

from flask_signal_metrics import SignalMetrics
from flask_signal_metrics.metrics.readback import read_multiprocess
from flask_signal_metrics.multiprocess import directory
from flask_signal_metrics.multiprocess.directory import check_directory
from flask_signal_metrics.multiprocess.directory import compact
from flask_signal_metrics.multiprocess.directory import exposed
from flask_signal_metrics.multiprocess.directory import LOCK_FILE
from flask_signal_metrics.multiprocess.directory import LockUnavailable
from flask_signal_metrics.multiprocess.directory import process_died

from ..conftest import make_app
from ..servers import lock_held
from .conftest import pretend_multiprocess


def test_a_file_still_empty_breaks_no_scrape_and_is_compacted_away(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A process opens its file empty, then sizes it: a scrape in between, or
    # a worker killed in between, must not fail the scrape or the compaction.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    key = mmap_key("jobs", "jobs_total", ["queue"], ["mail"], "Jobs.")
    written = MmapedDict(str(tmp_path / "counter_100.db"))  # type: ignore[no-untyped-call]
    written.write_value(key, 3.0, 0.0)  # type: ignore[no-untyped-call]
    written.close()  # type: ignore[no-untyped-call]
    (tmp_path / "counter_200.db").touch()  # empty, as between open and sizing
    (family,) = read_multiprocess(str(tmp_path))
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("jobs_total", {"queue": "mail"}, 3.0)
    ]
    assert compact(200) == 0
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_100.db"]


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [("min", [5.0, 7.0], 5.0), ("max", [-3.0, -8.0], -3.0), ("sum", [2.0, 3.0], 5.0)],
)
def test_compaction_merges_gauges_by_their_mode(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    mode: str,
    values: list[float],
    expected: float,
) -> None:
    # Two dead processes folded one after the other: the first one's value
    # is taken as it is (not merged with the 0 a new key reads as).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    key = mmap_key("probe", "probe", [], [], "A probe.")
    for pid, number in zip((100, 200), values, strict=True):
        written = MmapedDict(str(tmp_path / f"gauge_{mode}_{pid}.db"))  # type: ignore[no-untyped-call]
        written.write_value(key, number, 0.0)  # type: ignore[no-untyped-call]
        written.close()  # type: ignore[no-untyped-call]
    before = read_multiprocess(str(tmp_path))
    assert [s.value for f in before for s in f.samples] == [expected]
    assert compact(100) == 1
    assert compact(200) == 1
    assert [p.name for p in tmp_path.glob("*.db")] == [f"gauge_{mode}_compacted.db"]
    after = read_multiprocess(str(tmp_path))
    assert [s.value for f in after for s in f.samples] == [expected]


def _write_counter(directory: Path, pid: int, number: float) -> None:
    key = mmap_key("jobs", "jobs_total", [], [], "Jobs.")
    written = MmapedDict(str(directory / f"counter_{pid}.db"))  # type: ignore[no-untyped-call]
    written.write_value(key, number, 0.0)  # type: ignore[no-untyped-call]
    written.close()  # type: ignore[no-untyped-call]


def _jobs(directory: Path) -> list[float]:
    return [s.value for f in read_multiprocess(str(directory)) for s in f.samples]


def test_the_lock_file_is_this_users_only_whatever_the_umask(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another user who can open the lock file can hold it: every scrape stops.
    pretend_multiprocess(monkeypatch)
    old = os.umask(0)
    try:
        exposed([])
    finally:
        os.umask(old)
    lock = multiproc_dir / LOCK_FILE
    assert oct(lock.stat().st_mode & 0o777) == oct(0o600)


def test_a_lock_file_that_is_a_link_is_never_followed(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pretend_multiprocess(monkeypatch)
    target = tmp_path / "someone-elses-file"
    target.write_text("theirs")
    (multiproc_dir / LOCK_FILE).symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link; remove it"):
        check_directory()
    with pytest.raises(LockUnavailable) as refused:
        exposed([])
    assert refused.value.reason == "lock_error"  # the label its 503 is counted under
    assert target.read_text() == "theirs" and oct(target.stat().st_mode & 0o777) != oct(0o600)


@pytest.mark.parametrize("mode", ["exclusive", "shared"])
def test_a_held_lock_refuses_a_scrape_within_its_timeout(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    pretend_multiprocess(monkeypatch)
    _write_counter(multiproc_dir, 100, 3.0)
    with lock_held(multiproc_dir, mode):
        if mode == "shared":  # scrapes share the lock with each other
            assert _jobs_exposed() == [3.0]
        else:
            started = time.monotonic()
            with pytest.raises(LockUnavailable, match=r"held elsewhere for 0\.3 s") as refused:
                exposed([], lock_timeout=0.3)
            assert 0.3 <= time.monotonic() - started < 5
            assert refused.value.reason == "lock_timeout"
    assert _jobs_exposed() == [3.0]


def _jobs_exposed() -> list[float]:
    return [
        s.value for c in exposed([REGISTRY], lock_timeout=5) for f in c.collect() for s in f.samples
    ]


def test_a_compaction_never_waits_for_a_held_lock(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It runs in the server's master, which replaces dead workers only once it
    # returns: left for the next worker's exit, never waited for.
    monkeypatch.setattr(directory, "UNCOMPACTED", set())
    _write_counter(multiproc_dir, 100, 3.0)
    _write_counter(multiproc_dir, 200, 4.0)
    with lock_held(multiproc_dir, "shared"):  # a shared lock is enough to keep it out
        started = time.monotonic()
        process_died(100)
        assert time.monotonic() - started < 2
    assert sorted(p.name for p in multiproc_dir.glob("*.db")) == [
        "counter_100.db",
        "counter_200.db",
    ]
    assert _jobs(multiproc_dir) == [7.0]  # counted meanwhile, as they are
    process_died(200)  # the next exit folds both
    assert [p.name for p in multiproc_dir.glob("*.db")] == ["counter_compacted.db"]
    assert _jobs(multiproc_dir) == [7.0]


@pytest.mark.parametrize(
    ("mode", "refused"),
    [
        (0o777, "every user can write"),
        (0o1777, "every user can write"),  # sticky, as /tmp: others can still plant files
        (0o702, "every user can write"),
        (0o770, None),  # its group: a warning
        (0o700, None),
    ],
)
def test_a_directory_other_users_can_write_is_refused_at_init(
    multiproc_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mode: int,
    refused: str | None,
) -> None:
    multiproc_dir.chmod(mode)
    pretend_multiprocess(monkeypatch)
    app = make_app()
    if refused is None:
        SignalMetrics(app, registry=CollectorRegistry())
        assert ("group" in caplog.text) is bool(mode & 0o020)
        return
    with pytest.raises(ValueError) as info:
        SignalMetrics(app, registry=CollectorRegistry())
    said = str(info.value)
    assert "PROMETHEUS_MULTIPROC_DIR" in said and refused in said and "chmod 700" in said
    assert "signal_metrics" not in app.extensions


def test_a_directory_another_user_owns_is_refused(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() == 0:
        os.chown(multiproc_dir, 65534, -1)  # nobody's
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(ValueError, match=r"PROMETHEUS_MULTIPROC_DIR .* owned by uid"):
        check_directory()


def test_a_missing_directory_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="mkdir -m 700"):
        check_directory()
