"""The multiprocess directory: what a scrape reads, its lock, its checks and compaction."""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import fcntl
import functools
import glob
import logging
import os
import stat
import time
import typing as t

from prometheus_client import Counter
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ..config import LOCK_TIMEOUT
from ..metrics.names import HELP
from ..metrics.names import SCRAPES_REFUSED
from ..metrics.text import Collected
from ._compat import client_writes_files
from ._compat import make_key
from ._compat import read_file
from .writer import LIVE
from .writer import multiprocess_dir

logger = logging.getLogger("flask_signal_metrics")


def multiprocess() -> bool:
    """Whether prometheus_client writes its values to ``PROMETHEUS_MULTIPROC_DIR``.

    Decided by the client when it was first imported, from the environment then.
    """
    return client_writes_files()


#: The lock scrapes share and compaction holds alone, in the multiprocess directory.
LOCK_FILE = ".flask-signal-metrics.lock"

#: How long a compaction, in the server's master, waits for the lock before
#: leaving the dead process's files for the next one.
_COMPACT_WAIT = 0.05

#: The longest sleep between two tries of the lock.
_LOCK_PAUSE = 0.05


def exposed(
    collectors: cabc.Sequence[Collector], lock_timeout: float = LOCK_TIMEOUT
) -> list[Collector]:
    """What a scrape reads: the collectors, or in multiprocess mode every worker's files.

    In multiprocess mode the live registries hold only this worker's values;
    every scrape sums the directory's files as prometheus_client's
    ``MultiProcessCollector`` does. The files are read under a shared lock,
    so that :func:`compact` never moves counts under a scrape.

    :raises LockUnavailable: the lock was not had within ``lock_timeout``
        seconds, or its file cannot be opened.
    """
    if not multiprocess():
        return list(collectors)
    directory = multiprocess_dir()
    with directory_lock(directory, fcntl.LOCK_SH, lock_timeout):
        metrics = read_directory(directory)
    if REGISTRY not in collectors:
        # The files hold every process's metrics, those of the default
        # registry (the user's module-level ones) too: serve_default_registry
        # off keeps the families these collectors define.
        names = {metric.name for collector in collectors for metric in collector.collect()}
        metrics = [metric for metric in metrics if metric.name in names]
    return [Collected(metrics)]


def read_directory(directory: str) -> list[Metric]:
    """Every process's values in ``directory``, summed as ``MultiProcessCollector`` does.

    Its files, but those still empty: a process makes its file by opening it
    (empty) and then sizing it, and prometheus_client fails on an empty file
    (``struct.error``); a scrape between the two, as gunicorn boots a worker
    under load, must not fail. An empty file holds no value.
    """
    files = []
    for path in glob.glob(os.path.join(directory, "*.db")):
        with contextlib.suppress(FileNotFoundError):  # a live gauge's, removed meanwhile
            if os.path.getsize(path):
                files.append(path)
    return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]


class LockUnavailable(Exception):
    """The multiprocess directory's lock was not had in time, or its file cannot be opened.

    Whoever can open the lock file can hold it for as long as they like, so
    it is never waited for without a bound: a scrape is refused (503) and a
    compaction left for later.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        #: ``lock_timeout`` or ``lock_error``, the label of the refusals' count.
        self.reason = reason


@contextlib.contextmanager
def directory_lock(path: str, operation: int, timeout: float) -> t.Iterator[None]:
    """Hold the directory's lock (``LOCK_SH`` or ``LOCK_EX``), waiting at most ``timeout`` s.

    :raises LockUnavailable: not had in time, or the lock file cannot be opened.
    """
    try:
        fd = _open_lock(path)
    except OSError as e:
        raise LockUnavailable(
            f"cannot open {os.path.join(path, LOCK_FILE)} ({e.strerror or e})", "lock_error"
        ) from e
    try:
        _acquire(fd, operation, timeout)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock(directory: str) -> int:
    """The lock file's descriptor, made readable by this user only if it is new.

    A symbolic link at its path is refused (``ELOOP``), not followed.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(os.path.join(directory, LOCK_FILE), flags, 0o600)


def _acquire(fd: int, operation: int, timeout: float) -> None:
    """``flock`` without blocking, tried again after short sleeps until ``timeout`` has passed.

    A blocking ``flock`` has no timeout: it waits for as long as any other
    holder of the file keeps it.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockUnavailable(
                f"the multiprocess directory's lock was held elsewhere for {timeout:g} s"
                " (a compaction, or another process that opened the lock file)",
                "lock_timeout",
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, _LOCK_PAUSE)


def count_refused(reason: str) -> None:
    """Count one scrape refused for ``reason`` (a :class:`LockUnavailable`'s).

    Counted per answer, not per render: scrapes that joined one refused
    render are each refused. The count never turns the refusal into another
    error.
    """
    with contextlib.suppress(Exception):
        refused_counter().labels(reason).inc()


@functools.cache
def refused_counter() -> Counter:
    """The count of refused scrapes, made at most once a process (multiprocess mode only).

    In multiprocess mode a counter writes this process's file, which every
    scrape sums, registered or not: one counter serves every app of the
    process and a process with none (the master serving start_metrics_server).
    """
    counter = Counter(SCRAPES_REFUSED, HELP[SCRAPES_REFUSED], ("reason",), registry=None)
    for reason in ("lock_timeout", "lock_error"):
        counter.labels(reason)  # exported as 0 before the first refusal
    return counter


def check_directory() -> None:
    """Refuse a multiprocess directory that another user can write; at init, in multiprocess mode.

    Whoever can write the directory can plant the lock file (and hold it:
    every scrape refused) or a file named like a worker's (counts of their
    own, or a symbolic link that prometheus_client's files follow). So a
    directory every user can write, sticky or not, or one another user owns,
    is refused. One its group can write is allowed with a warning: the
    group is a choice of who shares it (and a umask of 002 makes every new
    directory so). A lock file an earlier release left readable to all is
    made this user's only.

    :raises ValueError: naming ``PROMETHEUS_MULTIPROC_DIR`` and the fix.
    """
    directory = multiprocess_dir()
    key = f"PROMETHEUS_MULTIPROC_DIR is {directory!r}"
    fix = (
        f"make it private (chmod 700 {directory}), or let examples/gunicorn.conf.py make"
        " one (tempfile.mkdtemp: a random name, mode 0700)"
    )
    try:
        info = os.stat(directory)
    except OSError as e:
        raise ValueError(
            f"{key}, which cannot be used ({e.strerror or e}); create it private to this"
            f" user before the app starts (mkdir -m 700 {directory})."
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{key}, which is not a directory; point it at a private directory.")
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        raise ValueError(
            f"{key}, which every user can write (mode {mode:o}): any of them could hold"
            f" its lock (stopping every scrape) or plant files in it; {fix}."
        )
    if info.st_uid not in (os.geteuid(), 0):
        raise ValueError(
            f"{key}, owned by uid {info.st_uid}, not by this process's user"
            f" ({os.geteuid()}): its owner could hold its lock or plant files in it;"
            " use a directory this user made, mode 0700."
        )
    if mode & stat.S_IWGRP:
        logger.warning(
            "flask-signal-metrics: %s, which its group (gid %d) can write (mode %o):"
            " every member could hold its lock (stopping every scrape) or plant files"
            " in it. Unless they all may, chmod g-w %s.",
            key,
            info.st_gid,
            mode,
            directory,
        )
    _check_lock_file(directory, key)


def _check_lock_file(directory: str, key: str) -> None:
    """A lock file already there must be this user's; it is made at the first scrape if not."""
    path = os.path.join(directory, LOCK_FILE)
    if not os.path.lexists(path):
        return
    try:
        fd = _open_lock(directory)
    except OSError as e:
        what = "a symbolic link" if os.path.islink(path) else f"unusable ({e.strerror or e})"
        raise ValueError(
            f"{key}, whose lock file {path} is {what}; remove it, and keep the"
            " directory private to this user (mode 0700)."
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid not in (os.geteuid(), 0):
            raise ValueError(
                f"{key}, whose lock file {path} is not a file of this user's"
                f" (uid {info.st_uid}); remove it, and keep the directory private"
                " to this user (mode 0700)."
            )
        if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


#: How the values of a dead process merge into the compacted file, by gauge mode.
_MERGE: dict[str, t.Callable[[float, float], float]] = {
    "sum": lambda a, b: a + b,
    "max": max,
    "min": min,
}


def compact(pid: int, wait: float = _COMPACT_WAIT) -> int:
    """Fold a dead process's files into one compacted file per type; returns the files folded.

    prometheus_client reads one file per process that ever lived, so the time
    of a scrape grows with every worker restart (``bench/bench_scrape.py``
    measures it). Counters, histograms and summaries are sums, and ``sum``,
    ``max`` and ``min`` gauges merge by their mode, so folding a dead
    process's values into ``<type>_compacted.db`` keeps every count: a scrape
    reads the same totals from fewer files. ``live*`` gauges are removed by
    :func:`process_died`; ``all`` and ``mostrecent`` gauges are left as they
    are. Runs under the directory's exclusive lock, which scrapes share.

    :raises LockUnavailable: the lock was not had within ``wait`` seconds.
    """
    directory = multiprocess_dir()
    with directory_lock(directory, fcntl.LOCK_EX, wait):
        return _compact(directory, pid)


def _compact(directory: str, pid: int) -> int:
    """:func:`compact`'s folding (hold the directory's exclusive lock)."""
    folded = 0
    for file in glob.glob(os.path.join(directory, f"*_{pid}.db")):
        if not os.path.getsize(file):  # killed while making it: no value
            os.remove(file)
            continue
        parts = os.path.basename(file)[:-3].split("_")
        if parts[0] == "gauge":
            if parts[1] not in _MERGE:
                continue
            merge, target = _MERGE[parts[1]], f"gauge_{parts[1]}_compacted.db"
        else:
            merge, target = _MERGE["sum"], f"{parts[0]}_compacted.db"
        path = os.path.join(directory, target)
        # A key new to the compacted file takes the dead process's value
        # as it is: merged with the 0 a new key reads as, a ``min``
        # gauge of 5 became 0.
        known = _keys(path)
        compacted = MmapedDict(path)  # type: ignore[no-untyped-call]
        try:
            for key, value, timestamp in read_file(file):
                if key in known:  # a file's keys are unique: no key comes twice
                    value = merge(make_key(compacted, key), value)
                compacted.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
        finally:
            compacted.close()  # type: ignore[no-untyped-call]
        os.remove(file)
        folded += 1
    return folded


def _keys(path: str) -> set[str]:
    """The keys a values file holds (none if it does not exist or is still empty)."""
    if not os.path.exists(path) or not os.path.getsize(path):
        return set()
    return {key for key, _, _ in read_file(path)}


#: Dead processes whose files are not compacted yet: the lock was held elsewhere.
UNCOMPACTED: set[int] = set()


def process_died(pid: int) -> None:
    """What a server's hook calls when a worker exits: mark it dead, then compact.

    It runs in the server's master (gunicorn's ``child_exit``), which
    replaces dead workers only once it returns and which an exception stops:
    the compaction never waits longer than a moment and never raises. Files
    it could not fold now are folded at a later call; until then every
    scrape sums them as they are, so no count is wrong meanwhile.
    """
    mark_process_dead(pid)  # type: ignore[no-untyped-call]
    with contextlib.suppress(FileNotFoundError):  # ours, which mark_process_dead does not know
        os.remove(os.path.join(multiprocess_dir(), f"{LIVE}_requests_{pid}.db"))
    UNCOMPACTED.add(pid)
    try:
        with directory_lock(multiprocess_dir(), fcntl.LOCK_EX, _COMPACT_WAIT):
            for dead in sorted(UNCOMPACTED):
                UNCOMPACTED.discard(dead)  # first: a file that fails to fold is not retried
                _compact(multiprocess_dir(), dead)
    except LockUnavailable as e:
        logger.warning(
            "flask-signal-metrics: the files of %d dead worker(s) are left as they are,"
            " to be compacted when the next worker exits (scrapes still count them): %s.",
            len(UNCOMPACTED),
            e,
        )
    except Exception:
        logger.exception("flask-signal-metrics: compacting a dead worker's files failed")
