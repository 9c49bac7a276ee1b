"""This process's values files, in prometheus_client's format, and the in-flight groups.

prometheus_client's multiprocess values each take one process-wide lock,
look up the pid and write the file on every increment. Here a request takes
one lock when it starts (in flight) and one when it is recorded, and writes
its values into files of their own, ``<type>_requests_<pid>.db``, made by the
client's own file code (``MmapedDict``, ``mmap_key``), which the client's
collector and :func:`~.directory.compact` read like the client's. Each value
is in the file as soon as its request is recorded: a SIGKILLed worker loses
no completed request.
"""

from __future__ import annotations

import contextlib
import os
import threading
import typing as t

from prometheus_client.mmap_dict import MmapedDict

from ._compat import close
from ._compat import current_map
from ._compat import doubles
from ._compat import make_key
from ._compat import position
from ._compat import read_file
from ._compat import write_value

#: The file type of the in-flight gauge: ``livesum``, so that a dead
#: worker's requests stop counting once ``process_died`` removed its file.
LIVE = "gauge_livesum"


def multiprocess_dir() -> str:
    """The directory prometheus_client writes its files to (multiprocess mode only)."""
    return os.environ["PROMETHEUS_MULTIPROC_DIR"]


class FileKeys(t.NamedTuple):
    """A file histogram's keys: one per bucket (not cumulative, as the client's), and its sum's."""

    buckets: list[str]
    total: str


class Through:
    """Stands in for a file's map where values cannot be written into it.

    Each value goes through ``MmapedDict.write_value``, slower but right.
    """

    __slots__ = ("_file", "_keys")

    def __init__(self, file: MmapedDict) -> None:
        self._file = file
        self._keys: list[str] = []

    def index(self, key: str) -> int:
        self._keys.append(key)
        return len(self._keys) - 1

    def __setitem__(self, index: int, number: float) -> None:
        write_value(self._file, self._keys[index], number)


class Value:
    """One value in this process's file: its number and where to write it.

    A value is one aligned double in the map, stored whole (a memoryview's
    item assignment copies the 8 bytes at once, never zeroing first as
    ``struct.pack_into`` does), so a reader never sees half a value; its
    timestamp stays the 0.0 the client wrote when it made the key.
    """

    __slots__ = ("index", "number", "view")

    def __init__(self, number: float, view: memoryview[float] | Through, index: int) -> None:
        self.number = number
        #: The file's map as doubles, or a :class:`Through`; the value's index in it.
        self.view = view
        self.index = index

    def add(self, amount: float) -> None:
        """Add ``amount`` and write the sum into the file (hold the files' lock)."""
        self.view[self.index] = self.number = self.number + amount


class HistogramValues(t.NamedTuple):
    """A file histogram's values: per bucket, and its sum."""

    buckets: list[Value]
    total: Value


class ProcessFiles:
    """This process's files for the request and render metrics.

    A value's bytes are written straight into the file's map at the position
    ``MmapedDict`` gave its key (see :mod:`._compat`), through a memoryview of
    the map as doubles, and the metrics hold their :class:`Value` objects, so
    a write looks nothing up. When a file grows the client maps it anew: its
    values move to a view of the new map, and the old view is let go, so the
    old map and its descriptor are freed. Each process checks the layout once
    on a scratch file (:func:`writes_directly`) before it writes so: where a
    client release changed it, every value goes through ``write_value``.
    """

    def __init__(self) -> None:
        self._files: dict[str, MmapedDict] = {}
        #: By file type: its current map as doubles.
        self._views: dict[str, memoryview[float]] = {}
        self.forget()

    def forget(self) -> None:
        """Start empty: at import, and in a forked child (the parent's files are its own).

        The files open here are closed: in a child, that closes only its copies.
        A new :attr:`values` table tells the metrics holding values of the
        parent's (their ``seen``) to make their own.
        """
        views, files = self._views, self._files
        # The new lock and tables first: whatever letting go of the old
        # ones does, this process records into files of its own.
        self.lock = threading.Lock()
        self._files = {}
        self._views = {}
        #: By file type: where values that cannot be written into the map go.
        self._through: dict[str, Through] = {}
        #: Called once, when this process opens its first file (records its first value).
        self.on_first_record: list[t.Callable[[], None]] = []
        #: Each value of this process, by its file key.
        self.values: dict[str, Value] = {}
        #: Whether values go straight into the maps (checked at the first file).
        self._direct: bool | None = None
        for view in views.values():
            view.release()  # a map with views cannot be closed
        for file in files.values():
            # A view that another thread was making when this process
            # forked is in no table: its map stays mapped; the file closes.
            close(file)

    def value(self, typ: str, key: str) -> Value:
        """The value of ``key`` in the ``typ`` file, made if new (hold :attr:`lock`)."""
        found = self.values.get(key)
        if found is None:
            file = self._files.get(typ) or self._open(typ)
            number = make_key(file, key)
            where = position(file, key) if self._direct else -1
            view = self._view(typ, file) if where >= 0 and where % 8 == 0 else None
            if view is not None:
                found = Value(number, view, where // 8)
            else:
                through = self._through.get(typ) or self._through.setdefault(typ, Through(file))
                found = Value(number, through, through.index(key))
            self.values[key] = found
        return found

    def _view(self, typ: str, file: MmapedDict) -> memoryview[float] | None:
        """The view of the file's current map (hold :attr:`lock`).

        Making a value may grow the file, which the client then maps anew:
        the file's values move to a view of the new map (every write holds
        the lock), and the old view is released.
        """
        old = self._views.get(typ)
        if old is not None and old.obj is current_map(file):
            return old
        view = doubles(file)
        if view is None:
            return None
        self._views[typ] = view
        if old is not None:
            for value in self.values.values():
                if value.view is old:
                    value.view = view
            old.release()
        return view

    def numbers(self) -> dict[str, float]:
        """Each value's number, by its file key (takes :attr:`lock`)."""
        with self.lock:
            return {key: value.number for key, value in self.values.items()}

    def histogram(self, keys: FileKeys) -> HistogramValues:
        """A histogram's values, all made in the file at once, as the client's are."""
        buckets = [self.value("histogram", key) for key in keys.buckets]
        return HistogramValues(buckets, self.value("histogram", keys.total))

    def _open(self, typ: str) -> MmapedDict:
        directory = multiprocess_dir()
        if self._direct is None:
            self._direct = writes_directly(directory)
        path = os.path.join(directory, f"{typ}_requests_{os.getpid()}.db")
        file = self._files[typ] = MmapedDict(path)  # type: ignore[no-untyped-call]
        starts, self.on_first_record = self.on_first_record, []
        for start in starts:
            start()
        return file


def writes_directly(directory: str) -> bool:
    """Whether a value assigned into a ``MmapedDict``'s map is what the client reads.

    Tried on a scratch file that no collector reads (not ``*.db``), removed after.
    """
    path = os.path.join(directory, f"probe_{os.getpid()}.tmp")
    probe = None
    try:
        probe = MmapedDict(path)  # type: ignore[no-untyped-call]
        make_key(probe, "probe")
        where = position(probe, "probe")
        view = doubles(probe)
        if where < 0 or where % 8 or view is None:
            return False
        with view:
            view[where // 8] = 1.5
        return [(key, value) for key, value, _ in read_file(path)] == [("probe", 1.5)]
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            if probe is not None:
                probe.close()  # type: ignore[no-untyped-call]
        with contextlib.suppress(OSError):
            os.remove(path)


FILES = ProcessFiles()
os.register_at_fork(after_in_child=FILES.forget)


class InFlight:
    """One (method, scheme)'s in-flight value in this process's file: ``next()`` counts one in.

    The iterator protocol is the interface both backends' groups share: the
    receivers count a request in with ``next(group.started)``, a C call on
    the in-process ``itertools.count``, this ``__next__`` here.
    """

    __slots__ = ("key", "seen", "value")

    def __init__(self, key: str) -> None:
        #: The in-flight value's key in this process's file.
        self.key = key
        #: The value, and the process's table it was made in: read only
        #: while ``seen`` is this process's (a forked child makes its own).
        self.seen: dict[str, Value] | None = None
        self.value: Value

    def __iter__(self) -> InFlight:
        return self

    def __next__(self) -> int:
        lock = FILES.lock
        lock.acquire()  # not ``with``: cheaper, on every request
        try:
            self.live().add(1.0)
        finally:
            lock.release()
        return 0

    def live(self) -> Value:
        """This process's in-flight value (hold the files' lock)."""
        if self.seen is not FILES.values:
            self.value = FILES.value(LIVE, self.key)
            self.seen = FILES.values
        return self.value


class FileGroup:
    """The requests of one (method, scheme) in multiprocess mode.

    ``next(group.started)`` counts one in flight, as on the in-process
    ``Group``; ``FileRecorder.add`` counts it out.
    """

    __slots__ = ("key", "started")

    def __init__(self, key: str) -> None:
        self.key = key
        self.started = InFlight(key)
