"""What a forked child redoes for objects that own locks or threads.

A process forked while another of its threads held a lock inherits that lock
held, by a thread the child does not have: the child's first use of it waits
forever. Gunicorn forks its workers from the master (a thread of ours runs
there under ``preload_app``), and a worker may fork children of its own
(``multiprocessing``) while its other threads record requests. Each object
owning a lock registers a method here that makes a new one in the child.
(The module-level singletons, multiprocess/writer.py's process files and
port_server.py's servers, register their own functions.)
"""

from __future__ import annotations

import os
import typing as t
import weakref


def at_fork(method: t.Callable[[], None]) -> None:
    """Call a bound method in a forked child, without keeping its object alive.

    ``os.register_at_fork`` has no way to unregister: the handler holds only
    a weak reference, so an object gone (an app's metrics in a test) costs a
    dead reference, not the object.
    """
    reference = weakref.WeakMethod(method)

    def forked() -> None:
        found = reference()
        if found is not None:
            found()

    os.register_at_fork(after_in_child=forked)
