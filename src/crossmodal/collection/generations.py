"""Sets of files replaced as a whole (an index and its sidecars).

Each save writes a fresh folder, fsyncs it, then atomically replaces one small pointer file naming
it; readers follow the pointer, so a crash at any write leaves the old set or the new one in use,
never a mix. Folders no pointer names (the old set, or a save that died) are removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json, fsync_dir, writer_gone


class FileSet:
    """The generations of one named set of files in ``root``; the pointer is ``{name}.state.json``."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = Path(root), name
        self.pointer = self.root / f"{name}.state.json"

    def current(self) -> tuple[Path, dict[str, Any]] | None:
        """(folder, metadata) of the set in use, or None when there is none (or an old flat layout)."""
        try:
            state = json.loads(self.pointer.read_text())
        except (OSError, ValueError):
            return None
        folder = self.root / str(state.get("dir", ""))
        return (folder, state) if state.get("dir") and folder.is_dir() else None

    def new_folder(self) -> Path:
        """An empty folder for the next generation; it counts only once ``commit`` names it."""
        folder = self.root / f"{self.name}.{time.time_ns()}.{os.getpid()}"
        folder.mkdir(parents=True)
        return folder

    def commit(self, folder: Path, state: dict[str, Any]) -> None:
        """Make ``folder`` (filled by the caller) the set in use, durably, then drop the old ones."""
        for path in folder.iterdir():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)
        fsync_dir(self.root)
        atomic_write_json(self.pointer, {**state, "dir": folder.name})
        self.clean()

    def drop(self) -> None:
        """Forget the set (the plan no longer needs a stored index)."""
        self.pointer.unlink(missing_ok=True)
        self.clean()

    def clean(self) -> None:
        """Remove this set's folders no pointer names (unless a live process other than us is writing
        one) and files of the flat layout used before generations."""
        current = self.current()
        keep = current[0].name if current else None
        for path in self.root.glob(f"{self.name}.*"):
            if path == self.pointer or path.name == keep:
                continue
            if path.is_dir():
                if not written_by_live_other(path.name):
                    shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def written_by_live_other(name: str) -> bool:
    """Is the file or folder named ``name`` (``prefix.pid``) being written by another process still running?"""
    try:
        pid = int(name.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return False
    return pid != os.getpid() and not writer_gone(pid)
