"""The only code that touches prometheus_client's private names.

Each access is one small function with a public fallback, used when the
client's private layout is not what these functions expect;
``tests/multiprocess/test_compat.py`` fails when a client release changes it.
"""

from __future__ import annotations

import contextlib
import os
import typing as t

from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict

#: Decided once, as the client decides it at its import: the fallback of
#: :func:`client_writes_files`.
_DIRECTORY_SET = "PROMETHEUS_MULTIPROC_DIR" in os.environ


def client_writes_files() -> bool:
    """Whether prometheus_client writes its values to ``PROMETHEUS_MULTIPROC_DIR``.

    Decided by the client when it was first imported (its ``ValueClass``);
    without it, from the environment when this module was imported.
    """
    value_class = getattr(values, "ValueClass", None)
    mutex = getattr(values, "MutexValue", None)
    if value_class is None or mutex is None:
        return _DIRECTORY_SET
    return value_class is not mutex


#: Where the client's metrics keep their label names.
_LABELNAMES = "_labelnames"


def has_labels(metric: object) -> bool:
    """Whether a metric, the client's or ours (public ``labelnames``), was made with label names.

    Fallback for the client's: a fresh metric without labels has samples of
    its own, a labelled one none until ``labels()``.
    """
    names = getattr(metric, "labelnames", None)
    if not isinstance(names, tuple):
        names = getattr(metric, _LABELNAMES, None)
    if isinstance(names, tuple):
        return bool(names)
    collect = t.cast("t.Callable[[], t.Iterable[t.Any]]", metric.collect)  # type: ignore[attr-defined]
    return not any(family.samples for family in collect())


def current_map(file: MmapedDict) -> object | None:
    """The file's current map, which the client replaces when the file grows; None if unknown."""
    return getattr(file, "_m", None)


def doubles(file: MmapedDict) -> memoryview[float] | None:
    """The file's map as native doubles (how the client packs values); None if unknown."""
    found = current_map(file)
    if found is None:
        return None
    try:
        return memoryview(found).cast("d")  # type: ignore[arg-type]
    except TypeError:
        return None


def position(file: MmapedDict, key: str) -> int:
    """Where the client put the value of ``key`` (a made key) in the map; -1 if unknown."""
    positions = getattr(file, "_positions", None)
    if not isinstance(positions, dict):
        return -1
    found = positions.get(key, -1)
    return found if isinstance(found, int) else -1


def make_key(file: MmapedDict, key: str) -> float:
    """Make ``key`` in the file if new (the client writes 0.0); its value."""
    number, _ = file.read_value(key)  # type: ignore[no-untyped-call]
    return float(number)


def write_value(file: MmapedDict, key: str, number: float) -> None:
    """The public write: slower than into the map, but right for any layout."""
    file.write_value(key, number, 0.0)  # type: ignore[no-untyped-call]


def read_file(path: str) -> list[tuple[str, float, float]]:
    """Each (key, value, timestamp) of a values file, as the client reads it."""
    read = MmapedDict.read_all_values_from_file(path)  # type: ignore[no-untyped-call]
    return [(key, value, timestamp) for key, value, timestamp, _ in read]


def close(file: MmapedDict) -> None:
    """Close a values file; if its map cannot be closed (a view of it is left), its file only."""
    try:
        file.close()  # type: ignore[no-untyped-call]
    except BufferError:
        descriptor = getattr(file, "_f", None)
        if descriptor is not None:
            with contextlib.suppress(Exception):
                descriptor.close()
