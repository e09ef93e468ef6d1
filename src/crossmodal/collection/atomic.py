"""Atomic file writes: write a temporary file beside the target, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_TMP = re.compile(r"^\..+\.(\d+)\.tmp$")


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` on a temporary file and move it over ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"))


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def writer_gone(pid: int) -> bool:
    """Is the process ``pid`` (which wrote a temporary file or folder) no longer running, and not us?"""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def remove_leftovers(folder: Path) -> None:
    """Delete temporary files (``.name.PID.tmp``) a crashed writer left directly in ``folder``."""
    for path in folder.glob(".*.tmp"):
        match = _TMP.match(path.name)
        if match and writer_gone(int(match.group(1))):
            with contextlib.suppress(OSError):  # a read-only collection: harmless, they are never read
                path.unlink(missing_ok=True)
