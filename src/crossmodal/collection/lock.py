"""One writer at a time: index runs over a collection take an exclusive lock on ``.write.lock``.

A second run waits (saying so) instead of racing the first over the same rows; the lock is an
``flock``, so the kernel releases it when its holder exits, however it exits.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".write.lock"


@contextmanager
def write_lock(folder: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the collection's write lock for the block; when another process holds it, tell ``on_wait``
    who, then wait for it."""
    path = Path(folder) / LOCK_FILE
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            if on_wait is not None:
                on_wait(f"{folder} is being written by {holder}; waiting for it to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"crossmodal pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
