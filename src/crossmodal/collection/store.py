"""The on-disk item store: one SQLite database holding every item's metadata and vector.

SQLite gives atomic, durable transactions, so a write either lands whole or not at all and a killed
index run loses at most the batch in flight. Ids are SQLite AUTOINCREMENT keys: stable and never
reused, so they survive deletes, renames and re-embeds. For search, the vectors of each kind are
also kept as a memory-mappable ``.npy`` snapshot, rebuilt when the store's generation changes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write, atomic_write_json

DB = "items.sqlite"
CACHE = "cache"
KINDS = ("image", "text")

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('image', 'text')),
    path TEXT,
    text TEXT,
    size INTEGER,
    mtime REAL,
    hash TEXT NOT NULL,
    fields TEXT NOT NULL DEFAULT '{}',
    added REAL NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,  -- generation in which the vector was last written
    vector BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS items_image_path ON items(path) WHERE kind = 'image';
CREATE INDEX IF NOT EXISTS items_source ON items(kind, path);
CREATE INDEX IF NOT EXISTS items_hash ON items(hash);
CREATE INDEX IF NOT EXISTS items_seq ON items(kind, seq);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    size INTEGER,
    mtime REAL,
    error TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', '0');
"""

COLUMNS = "id, kind, path, text, size, mtime, hash, fields, added"


@dataclass
class Item:
    """One stored photo or text, without its vector."""

    id: int
    kind: str
    path: str | None
    text: str | None
    size: int | None
    mtime: float | None
    hash: str
    fields: dict[str, Any] = field(default_factory=dict)
    added: float = 0.0

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Item:
        return cls(*row[:7], fields=json.loads(row[7]), added=row[8])


@dataclass
class NewItem:
    """An item to insert; ``id`` set means "replace the vector and metadata of this existing item"."""

    kind: str
    vector: np.ndarray
    hash: str
    path: str | None = None
    text: str | None = None
    size: int | None = None
    mtime: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


class ItemStore:
    """Items, vectors and failures of one collection folder."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder = Path(folder)
        self.dim = dim
        # One connection; the HTTP server shares it between threads and serialises access itself.
        self.db = sqlite3.connect(self.folder / DB, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._matrices: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}  # kind -> (generation, ids, vectors)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside lands together, and bumps the generation."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    @property
    def generation(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    # -- reads -------------------------------------------------------------------------------------

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM items WHERE kind = ?", (kind,)).fetchone()[0]

    def get(self, ids: Iterable[int]) -> dict[int, Item]:
        """Items by id (missing ids are left out)."""
        ids = [int(i) for i in ids]
        out: dict[int, Item] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"SELECT {COLUMNS} FROM items WHERE id IN ({marks})", chunk):
                out[row[0]] = Item.from_row(row)
        return out

    def select(self, where: str = "1", params: Sequence[Any] = ()) -> list[Item]:
        return [Item.from_row(r) for r in self.db.execute(f"SELECT {COLUMNS} FROM items WHERE {where}", params)]

    def ids_where(self, where: str, params: Sequence[Any] = ()) -> np.ndarray:
        rows = self.db.execute(f"SELECT id FROM items WHERE {where}", params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def images_under(self, root: str) -> dict[str, Item]:
        """Image items whose path lies below the folder ``root``, by path."""
        prefix = root.rstrip("/") + "/"
        items = self.select("kind = 'image' AND substr(path, 1, ?) = ?", (len(prefix), prefix))
        return {it.path: it for it in items}

    def image_by_path(self, path: str) -> Item | None:
        found = self.select("kind = 'image' AND path = ?", (path,))
        return found[0] if found else None

    def by_hash(self, hash_: str, kind: str) -> list[Item]:
        return self.select("kind = ? AND hash = ?", (kind, hash_))

    def hashes(self, kind: str) -> frozenset[str]:
        """The content hashes of all stored items of ``kind`` (lets decoding skip content already stored)."""
        return frozenset(h for (h,) in self.db.execute("SELECT hash FROM items WHERE kind = ?", (kind,)))

    def vector(self, item_id: int) -> np.ndarray:
        row = self.db.execute("SELECT vector FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(f"no item with id {item_id}")
        return np.frombuffer(row[0], dtype=np.float32).copy()

    def written_since(self, kind: str, generation: int) -> np.ndarray:
        """Ids of items of ``kind`` whose vector was written after ``generation`` (new or re-embedded)."""
        return self.ids_where("kind = ? AND seq > ?", (kind, generation))

    def failures_under(self, root: str) -> dict[str, tuple[int, float]]:
        prefix = root.rstrip("/") + "/"
        rows = self.db.execute(
            "SELECT path, size, mtime FROM failures WHERE substr(path, 1, ?) = ?", (len(prefix), prefix)
        )
        return {p: (s, m) for p, s, m in rows}

    def failures(self) -> list[tuple[str, str]]:
        return self.db.execute("SELECT path, error FROM failures ORDER BY path").fetchall()

    # -- writes (call inside transaction()) ---------------------------------------------------------

    def put(self, db: sqlite3.Connection, item: NewItem) -> int:
        """Insert a new item, or overwrite an existing one in place (same id) when ``item.id`` is set."""
        vector = np.ascontiguousarray(item.vector, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise ValueError(f"vector has shape {vector.shape}, the collection stores ({self.dim},)")
        values = (item.kind, item.path, item.text, item.size, item.mtime, item.hash, json.dumps(item.fields),
                  vector.tobytes(), self.generation + 1)
        if item.id is not None:
            db.execute(
                "UPDATE items SET kind=?, path=?, text=?, size=?, mtime=?, hash=?, fields=?, vector=?, seq=? "
                "WHERE id=?",
                (*values, item.id),
            )
            return item.id
        cur = db.execute(
            "INSERT INTO items (kind, path, text, size, mtime, hash, fields, vector, seq, added) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, time.time()),
        )
        return int(cur.lastrowid)

    def move(self, db: sqlite3.Connection, item_id: int, path: str, size: int, mtime: float) -> None:
        """Point an existing item at a new path (a rename): same id, same vector."""
        db.execute("UPDATE items SET path=?, size=?, mtime=? WHERE id=?", (path, size, mtime, item_id))

    def delete(self, db: sqlite3.Connection, ids: Iterable[int]) -> int:
        ids = [(int(i),) for i in ids]
        db.executemany("DELETE FROM items WHERE id = ?", ids)
        return len(ids)

    def record_failure(self, db: sqlite3.Connection, path: str, size: int | None, mtime: float | None,
                       error: str) -> None:
        db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?)", (path, size, mtime, error, time.time()))

    def clear_failures(self, db: sqlite3.Connection, paths: Iterable[str]) -> None:
        db.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in paths])

    # -- vectors for search ------------------------------------------------------------------------

    def matrix(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N,), vectors (N, dim)) of every item of ``kind``, memory-mapped from a snapshot.

        The snapshot is rebuilt (atomically) when the store changed since it was written, so readers
        never see a half-written matrix and an interrupted rebuild only costs a rebuild.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        generation = self.generation
        held = self._matrices.get(kind)
        if held is not None and held[0] == generation:
            return held[1], held[2]
        ids, vectors = self._load_matrix(kind, generation)
        self._matrices[kind] = (generation, ids, vectors)
        return ids, vectors

    def _load_matrix(self, kind: str, generation: int) -> tuple[np.ndarray, np.ndarray]:
        cache = self.folder / CACHE
        state_file = cache / f"{kind}.json"
        try:
            state = json.loads(state_file.read_text())
            if state["generation"] == generation:
                ids = np.load(cache / f"{kind}.ids.npy")
                vectors = np.load(cache / f"{kind}.vectors.npy", mmap_mode="r")
                if len(ids) == len(vectors):
                    return ids, vectors
        except (OSError, ValueError, KeyError):
            pass
        ids, vectors = self._read_matrix(kind)
        atomic_write(cache / f"{kind}.ids.npy", lambda f: np.save(f, ids))
        atomic_write(cache / f"{kind}.vectors.npy", lambda f: np.save(f, vectors))
        atomic_write_json(state_file, {"generation": generation, "count": len(ids)})
        return ids, vectors

    def _read_matrix(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        n = self.count(kind)
        ids = np.empty(n, dtype=np.int64)
        vectors = np.empty((n, self.dim), dtype=np.float32)
        rows = self.db.execute("SELECT id, vector FROM items WHERE kind = ? ORDER BY id", (kind,))
        i = 0
        for i, (item_id, blob) in enumerate(rows):
            ids[i] = item_id
            vectors[i] = np.frombuffer(blob, dtype=np.float32)
        return ids[: i + 1 if n else 0], vectors[: i + 1 if n else 0]

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
