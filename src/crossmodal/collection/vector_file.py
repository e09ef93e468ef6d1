"""Append-only vector files, one per item kind: the one full-precision copy of every stored vector.

A row is ``[vector, -bias]`` (float32, the layout indexes search, search/normalise.py), so a graph index
can search the file itself. Rows are only ever appended: rewriting an item appends a new row and leaves
the old one unused until the file is compacted. An item names its row in SQLite, and appended rows are
fsynced before the transaction that names them commits (store.py): a crash leaves at most rows past
the committed count, which no item names and the next append overwrites. Compacting writes a new file
under a new name that one transaction swaps in. Searches read a file memory-mapped.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import fsync_dir
from .generations import written_by_live_other

VECTORS = "vectors"


class DiskFullError(OSError):
    """A write failed because the disk is full; the store is unchanged."""


class VectorFiles:
    """The vector files of one collection folder, ``width`` float32 columns a row."""

    def __init__(self, folder: Path, width: int) -> None:
        self.folder = Path(folder) / VECTORS
        self.width = width
        self._mapped: dict[str, tuple[int, np.ndarray]] = {}  # file name -> (rows, mapping)

    def rows(self, name: str, count: int) -> np.ndarray:
        """The first ``count`` rows of file ``name``, memory-mapped read-only (mapped again once it grew)."""
        held = self._mapped.get(name)
        if held is None or held[0] < count:
            mapping = (np.memmap(self.folder / name, dtype=np.float32, mode="r", shape=(count, self.width))
                       if count else np.zeros((0, self.width), dtype=np.float32))
            held = self._mapped[name] = (count, mapping)
        return held[1][:count]

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` copied into memory with one read (builds: the page cache holds them, not us)."""
        out = np.empty((stop - start, self.width), dtype=np.float32)
        with open(self.folder / name, "rb") as f:
            f.seek(start * self.width * 4)
            f.readinto(memoryview(out).cast("B"))
        return out

    def copy(self, name: str, count: int, rows: np.ndarray, to: str, batch: int = 65536) -> None:
        """Write rows ``rows`` of file ``name`` (of ``count`` committed rows), in that order, as file ``to``, a
        batch at a time through a mapping of its own that is dropped afterwards (its pages leave the process)."""
        mapping = np.memmap(self.folder / name, dtype=np.float32, mode="r", shape=(count, self.width))
        for start in range(0, len(rows), batch):
            self.append(to, start, mapping[rows[start:start + batch]])
        del mapping

    def reader(self, name: str, start: int, stop: int) -> FileRows:
        """Rows ``start:stop`` of file ``name`` as something sliced into arrays, each slice one read."""
        return FileRows(self, name, start, stop)

    def append(self, name: str, at: int, rows: np.ndarray) -> None:
        """Write ``rows`` from row ``at`` on (over what a crashed writer left there) and make them durable."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows of shape {rows.shape}, the file holds rows of {self.width}")
        path = self.folder / name
        new = not path.exists()
        try:
            self.folder.mkdir(exist_ok=True)
            with open(path, "w+b" if new or at == 0 else "r+b") as f:  # from row 0: nothing of it is committed
                f.seek(at * self.width * 4)
                f.write(memoryview(rows).cast("B"))
                f.flush()
                os.fsync(f.fileno())
            if new:
                fsync_dir(self.folder)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DiskFullError(errno.ENOSPC, f"the disk holding {self.folder} is full; nothing of this batch "
                                    "was stored (free some space and run again)") from e
            raise

    def remove_others(self, keep: set[str]) -> None:
        """Delete vector files not in ``keep`` (replaced by compacted ones, or left by a crashed compaction),
        except one another live process is writing (named ``kind.generation.pid.f32``, see ``new_name``)."""
        for path in self.folder.glob("*.f32"):
            if path.name not in keep and not written_by_live_other(path.stem):
                path.unlink(missing_ok=True)
                self._mapped.pop(path.name, None)

    @staticmethod
    def new_name(kind: str, generation: int) -> str:
        """The name of a compacted file of ``kind``, written by this process in store ``generation``."""
        return f"{kind}.{generation}.{os.getpid()}.f32"


def touch(rows: np.ndarray) -> None:
    """Fault every page of mapped ``rows`` into this process (one read a row), so that searches do not each
    pay for pages they are the first to touch."""
    np.add.reduce(rows[:, 0])


class GatheredRows:
    """Rows of a mapped file in another order (ids sorted; some rows unused), read on indexing, so that no
    full copy is made: ``cols`` columns of each."""

    def __init__(self, mapping: np.ndarray, rows: np.ndarray, cols: int) -> None:
        self.mapping, self.row_of, self.cols = mapping, rows, cols
        self.shape = (len(rows), cols)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return len(self.row_of)

    def __getitem__(self, sel: Any) -> np.ndarray:
        rows = self.row_of[sel]
        if np.ndim(rows) == 0:
            return np.array(self.mapping[int(rows), : self.cols])
        order = np.argsort(rows, kind="stable")  # read the mapping front to back
        out = np.empty((len(rows), self.cols), dtype=np.float32)
        out[order] = self.mapping[rows[order], : self.cols]
        return out

    def file_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(the position in this view of each row of the file up to the last one used, -1 where unused; those
        rows of the file, ``cols`` columns): an exact search scans them front to back rather than gather them."""
        stop = int(self.row_of.max()) + 1 if len(self.row_of) else 0
        position = np.full(stop, -1, dtype=np.int64)
        position[self.row_of] = np.arange(len(self.row_of))
        return position, self.mapping[:stop, : self.cols]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class FileRows:
    """A range of a vector file's rows, sliced into arrays by reading the file (an index build adds them a
    batch at a time: the page cache holds the file, not the building process)."""

    def __init__(self, files: VectorFiles, name: str, start: int, stop: int) -> None:
        self.files, self.name, self.start, self.stop = files, name, start, stop
        self.shape = (stop - start, files.width)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, part: slice) -> np.ndarray:
        first, last, _ = part.indices(len(self))
        return self.files.read(self.name, self.start + first, self.start + max(first, last))
