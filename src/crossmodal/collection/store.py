"""The on-disk item store: one SQLite database holding every item's metadata, and its vectors.

SQLite gives atomic, durable transactions, so a write either lands whole or not at all and a killed
index run loses at most the batch in flight. Ids are SQLite AUTOINCREMENT keys: stable and never
reused, so they survive deletes, renames and re-embeds. Vectors live once, in an append-only file per
kind (vector_file.py) that searches memory-map; each item names its row there, and a transaction's new
rows are made durable before it commits.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..rerank.words import WORD_RECORD
from ..search.understand import PLACE_FIELDS
from . import keywords
from .paths import decode_path, encode_path, under
from .vector_file import DiskFullError, GatheredRows, VectorFiles

if TYPE_CHECKING:
    from ..rerank.runtime import Reranker
    from ..search.normalise import Bank

DB = "items.sqlite"
PAGE_SIZE = 16384
MAX_UNUSED = 0.2  # share of a vector file's rows left unused (deleted, rewritten) before it is compacted
CACHE = "cache"  # memory-mappable snapshots of the vectors, before vector files (removed on migration)
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
    seq INTEGER NOT NULL DEFAULT 0,  -- generation in which the vector (or its bias) was last written
    vector_row INTEGER,  -- the row of its vector in the kind's vector file (vector_file.py)
    bias REAL  -- nearest-neighbour normalisation bias (search/normalise.py); NULL until computed
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
-- What a reranker reads of each photo (its tokens; its likeliest words, keyed by the reranker's words
-- fingerprint), computed once when it is encoded; keyed by content, so copies share it.
CREATE TABLE IF NOT EXISTS rerank_tokens (
    hash TEXT NOT NULL,
    reranker TEXT NOT NULL,
    tokens BLOB NOT NULL,
    PRIMARY KEY (hash, reranker)
);
INSERT OR IGNORE INTO meta VALUES ('generation', '0');
-- Ids deleted, by the generation that deleted them, so that an index behind the store learns what left it
-- without reading every id (collection/indexes.py); kept until the index has caught up.
CREATE TABLE IF NOT EXISTS deleted (id INTEGER NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS deleted_seq ON deleted(kind, seq);
CREATE TRIGGER IF NOT EXISTS items_deleted AFTER DELETE ON items BEGIN
    INSERT INTO deleted
    VALUES (OLD.id, OLD.kind, (SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'generation'));
END;
INSERT OR IGNORE INTO meta SELECT 'deletes_logged_after', value FROM meta WHERE key = 'generation';
"""

COLUMNS = "id, kind, path, text, size, mtime, hash, fields, added"


class ReadOnlyCollectionError(PermissionError):
    """A write to a collection this process can only read."""


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
        return cls(row[0], row[1], decode_path(row[2]), *row[3:7], fields=json.loads(row[7]), added=row[8])


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
    bias: float | None = None


class ItemStore:
    """Items, vectors and failures of one collection folder."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder = Path(folder)
        self.dim = dim
        # One connection; the HTTP server shares it between threads and serialises access itself.
        # A collection on a read-only mount (or without write permission) is searched, never written.
        self.read_only = not os.access(self.folder, os.W_OK) or (
            (self.folder / DB).exists() and not os.access(self.folder / DB, os.W_OK))
        if self.read_only:
            self.db = _connect_read_only(self.folder / DB)
        else:
            self.db = sqlite3.connect(self.folder / DB, timeout=60, isolation_level=None, check_same_thread=False)
            # For a new database only (rows of collections from before vector files held a ~2.2 KB vector).
            self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            if "bias" not in self._columns():  # older collections
                self.db.execute("ALTER TABLE items ADD COLUMN bias REAL")
            # Finds an item still without a bias at once (biases_current), however large the store.
            self.db.execute("CREATE INDEX IF NOT EXISTS items_no_bias ON items(kind) WHERE bias IS NULL")
            # Finds a video's moment at once (moments.any_moments), or that there is none, however many photos.
            self.db.execute("CREATE INDEX IF NOT EXISTS items_moments ON items(kind) WHERE instr(hash, ':') > 0")
            for key in PLACE_FIELDS:  # the place names a query's words are matched against, without a full scan
                self.db.execute(f"CREATE INDEX IF NOT EXISTS items_{key} ON items(kind, {_field(key)}) "
                                f"WHERE {_field(key)} IS NOT NULL")
        self._bias = "bias" if "bias" in self._columns() else "NULL"  # NULL: an old read-only collection
        self.bank: Bank | None = None  # the normalisation bank biases are computed with (set by the collection)
        self.reranker: Reranker | None = None  # the reranker whose photo tokens are stored (set by the collection)
        self._writing: int | None = None  # the generation the open transaction writes
        self.files = VectorFiles(self.folder, dim + 1)
        self._pending: dict[str, tuple[str, int, list[np.ndarray]]] = {}  # kind -> (file, first row, new rows)
        # kind -> (generation, ids, rows [vector, -bias] in id order, biases)
        self._matrices: dict[str, tuple[int, np.ndarray, Any, np.ndarray]] = {}
        if not self.read_only:
            keywords.ensure(self.db)  # kept in step with the items by triggers (keywords.py)
            if "vector" in self._columns():  # vectors still in the rows: written before vector files
                from .migrate import vectors_to_files

                vectors_to_files(self)
        # Where an item's vector is: its row in the vector file, or (an old read-only collection) its blob.
        self._ref = "vector" if "vector" in self._columns() else "vector_row"

    def close(self) -> None:
        self.db.close()

    def _columns(self) -> set[str]:
        return {row[1] for row in self.db.execute("PRAGMA table_info(items)")}

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside lands together, and bumps the generation.

        A full disk is reported as such (SQLite has already rolled back); a read-only collection refuses.
        """
        if self.read_only:
            raise ReadOnlyCollectionError(f"{self.folder} is read-only: it can be searched, but adding or "
                                          "removing items needs write access to it")
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self._writing = self.generation + 1
            try:
                yield self.db
                self._write_rows(self.db)  # durable before the rows that name them commit
                self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    self.db.execute("ROLLBACK")
                raise
            finally:
                self._writing = None
                self._pending = {}
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise DiskFullError(errno.ENOSPC, f"the disk holding {self.folder} is full; nothing of this "
                                    "batch was stored (free some space and run again)") from e
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
        return self.ids_where_table("items", where, params)

    def ids_where_table(self, table: str, where: str, params: Sequence[Any] = ()) -> np.ndarray:
        rows = self.db.execute(f"SELECT id FROM {table} WHERE {where}", params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def images_under(self, root: str) -> dict[str, Item]:
        """Image items whose path lies below the folder ``root``, by path."""
        below, params = under("path", root)
        items = self.select(f"kind = 'image' AND {below}", params)
        return {it.path: it for it in items}

    def field_values(self, kind: str, key: str) -> list[str]:
        """The distinct text values of one field among items of ``kind`` (a place field: read from its index)."""
        rows = self.db.execute(f"SELECT DISTINCT {_field(key)} FROM items WHERE kind = ? AND {_field(key)} IS NOT NULL",
                               (kind,))
        return [value for (value,) in rows if isinstance(value, str)]

    def field_names(self) -> set[str]:
        """The names of every field stored with an item."""
        return {r[0] for r in self.db.execute("SELECT DISTINCT key FROM items, json_each(items.fields)")}

    def image_by_path(self, path: str) -> Item | None:
        found = self.select("kind = 'image' AND path = ?", (encode_path(path),))
        return found[0] if found else None

    def by_hash(self, hash_: str, kind: str) -> list[Item]:
        return self.select("kind = ? AND hash = ?", (kind, hash_))

    def hashes(self, kind: str) -> frozenset[str]:
        """The content hashes of all stored items of ``kind`` (lets decoding skip content already stored)."""
        return frozenset(h for (h,) in self.db.execute("SELECT hash FROM items WHERE kind = ?", (kind,)))

    def vector(self, item_id: int) -> np.ndarray:
        vectors, _ = self.vectors_of(np.array([item_id]), missing=KeyError)
        return vectors[0]

    def deleted_since(self, kind: str, generation: int) -> np.ndarray | None:
        """Ids of ``kind`` deleted after ``generation`` (some may be back, with their old id), or None when
        deletes were not logged that far back (a collection from before the log)."""
        logged_after = self._meta("deletes_logged_after")
        if logged_after is None or generation < int(logged_after):
            return None
        return self.ids_where_table("deleted", "kind = ? AND seq > ?", (kind, generation))

    def forget_deleted(self, kind: str, generation: int) -> None:
        """Drop the log of deletes up to ``generation`` (an index of ``kind`` has caught up with them)."""
        if not self.read_only and self.db.execute("SELECT 1 FROM deleted WHERE kind = ? AND seq <= ? LIMIT 1",
                                                  (kind, generation)).fetchone():
            self.db.execute("DELETE FROM deleted WHERE kind = ? AND seq <= ?", (kind, generation))

    def vectors_of(self, ids: np.ndarray, missing: type[Exception] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim), biases (n,), NaN where none) of items by id, in the order given (zeros for an id
        not stored, unless ``missing`` is raised): for a few items, e.g. the candidates a search rescores."""
        vectors = np.zeros((len(ids), self.dim), dtype=np.float32)
        biases = np.full(len(ids), np.nan, dtype=np.float32)
        where = {int(i): row for row, i in enumerate(ids)}
        chunk_ids = list(where)
        seen: set[int] = set()
        for start in range(0, len(chunk_ids), 500):
            chunk = chunk_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            refs: dict[str, list[tuple[int, Any]]] = {}
            for item_id, kind, ref, bias in self.db.execute(
                    f"SELECT id, kind, {self._ref}, {self._bias} FROM items WHERE id IN ({marks})", chunk):
                refs.setdefault(kind, []).append((where[item_id], ref))
                seen.add(item_id)
                biases[where[item_id]] = np.nan if bias is None else bias
            for kind, pairs in refs.items():
                out, kind_refs = zip(*pairs, strict=True)
                vectors[list(out)] = self._vectors(kind, kind_refs)
        if missing is not None and len(seen) < len(where):
            raise missing(f"no item with id {min(set(where) - seen)}")
        return vectors, biases

    def vector_rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows of items' vectors in their kind's vector file, in the order given (-1: not stored)."""
        where = {int(i): n for n, i in enumerate(ids)}
        out = np.full(len(ids), -1, dtype=np.int64)
        chunk_ids = list(where)
        for start in range(0, len(chunk_ids), 500):
            chunk = chunk_ids[start:start + 500]
            for item_id, row in self.db.execute(
                    f"SELECT id, vector_row FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                out[where[item_id]] = row
        return out

    def _vectors(self, kind: str, refs: Sequence[Any]) -> np.ndarray:
        """Vectors (n, dim) by their rows in the vector file of ``kind`` (or, in an old collection, blobs)."""
        if self._ref == "vector":
            return np.stack([np.frombuffer(blob, dtype=np.float32) for blob in refs])
        rows = np.asarray(refs, dtype=np.int64)
        order = np.argsort(rows)  # read the mapping front to back
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        out[order] = self._mapping(kind)[rows[order], : self.dim]
        return out

    def _mapping(self, kind: str) -> np.ndarray:
        """The committed rows of the vector file of ``kind``, memory-mapped."""
        name, count = self.vector_file(kind)
        return self.files.rows(name, count)

    def vector_file(self, kind: str) -> tuple[str, int]:
        """(name, committed rows) of the vector file of ``kind``."""
        state = self._meta(f"vectors.{kind}")
        if state is None:
            return f"{kind}.f32", 0
        state = json.loads(state)
        return state["file"], state["rows"]

    def biases_current(self, kind: str) -> bool:
        """Does every item of ``kind`` have a bias from the current bank (so searches normalise)?"""
        if not self._stored_bank_current():
            return False
        return self.db.execute(f"SELECT 1 FROM items WHERE kind = ? AND {self._bias} IS NULL LIMIT 1",
                               (kind,)).fetchone() is None

    def written_since(self, kind: str, generation: int) -> np.ndarray:
        """Ids of items of ``kind`` whose vector was written after ``generation`` (new or re-embedded)."""
        return self.ids_where("kind = ? AND seq > ?", (kind, generation))

    def failures_under(self, root: str) -> dict[str, tuple[int, float]]:
        below, params = under("path", root)
        rows = self.db.execute(f"SELECT path, size, mtime FROM failures WHERE {below}", params)
        return {decode_path(p): (s, m) for p, s, m in rows}

    def failures(self) -> list[tuple[str, str]]:
        return [(decode_path(p), e) for p, e in self.db.execute("SELECT path, error FROM failures ORDER BY path")]

    # -- writes (call inside transaction()) ---------------------------------------------------------

    def put(self, db: sqlite3.Connection, item: NewItem) -> int:
        """Insert a new item, or overwrite an existing one in place (same id) when ``item.id`` is set."""
        vector = np.ascontiguousarray(item.vector, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise ValueError(f"vector has shape {vector.shape}, the collection stores ({self.dim},)")
        row = np.append(vector, -(item.bias or 0.0)).astype(np.float32)
        kept = None if item.id is None else self._unchanged_row(item.id, item.kind, row)
        row = kept if kept is not None else int(self.stage_rows(item.kind, row[None])[0])
        values = (item.kind, encode_path(item.path), item.text, item.size, item.mtime, item.hash,
                  json.dumps(item.fields), row, self._writing or self.generation + 1, item.bias)
        if item.id is not None:
            db.execute(
                "UPDATE items SET kind=?, path=?, text=?, size=?, mtime=?, hash=?, fields=?, vector_row=?, seq=?, "
                "bias=? WHERE id=?",
                (*values, item.id),
            )
            return item.id
        cur = db.execute(
            "INSERT INTO items (kind, path, text, size, mtime, hash, fields, vector_row, seq, bias, added) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, time.time()),
        )
        return int(cur.lastrowid)

    def _unchanged_row(self, item_id: int, kind: str, row: np.ndarray) -> int | None:
        """The stored row of an item being rewritten when it already holds ``row`` (a touched file, new fields):
        the vector file then does not grow."""
        found = self.db.execute("SELECT vector_row FROM items WHERE id = ? AND kind = ?", (item_id, kind)).fetchone()
        mapping = self._mapping(kind)
        if found is None or found[0] is None or found[0] >= len(mapping):
            return None
        return found[0] if np.array_equal(mapping[found[0]], row) else None

    def stage_rows(self, kind: str, rows: np.ndarray) -> np.ndarray:
        """Queue rows ``[vector, -bias]`` for the vector file of ``kind``; returns the row numbers they will
        have once the open transaction commits (which writes them first)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if kind not in self._pending:
            self._pending[kind] = (*self.vector_file(kind), [])
        _, first, queued = self._pending[kind]
        start = first + sum(len(r) for r in queued)
        queued.append(np.asarray(rows, dtype=np.float32))
        return np.arange(start, start + len(rows))

    def _write_rows(self, db: sqlite3.Connection) -> None:
        """Append the open transaction's queued rows to their files, durably, and record the new row counts."""
        for kind, (name, first, queued) in self._pending.items():
            if queued:
                rows = np.concatenate(queued)
                self.files.append(name, first, rows)
                self.set_vector_file(db, kind, name, first + len(rows))

    def set_vector_file(self, db: sqlite3.Connection, kind: str, name: str, rows: int) -> None:
        """Record which file holds the vectors of ``kind`` and how many of its rows are committed."""
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                   (f"vectors.{kind}", json.dumps({"file": name, "rows": rows})))

    def move(self, db: sqlite3.Connection, item_id: int, path: str, size: int, mtime: float) -> None:
        """Point an existing item at a new path (a rename): same id, same vector."""
        db.execute("UPDATE items SET path=?, size=?, mtime=? WHERE id=?", (encode_path(path), size, mtime, item_id))

    def delete(self, db: sqlite3.Connection, ids: Iterable[int]) -> int:
        ids = [(int(i),) for i in ids]
        db.executemany("DELETE FROM items WHERE id = ?", ids)
        return len(ids)

    def record_failure(self, db: sqlite3.Connection, path: str, size: int | None, mtime: float | None,
                       error: str) -> None:
        db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?)",
                   (encode_path(path), size, mtime, error, time.time()))

    def clear_failures(self, db: sqlite3.Connection, paths: Iterable[str]) -> None:
        db.executemany("DELETE FROM failures WHERE path = ?", [(encode_path(p),) for p in paths])

    # -- vectors for search ------------------------------------------------------------------------

    def matrix(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N,), vectors (N, dim)) of every item of ``kind``, ids ascending: the vector file memory-mapped
        (rows read on indexing where the file's order is not the ids', after re-embeds or deletes)."""
        _, ids, rows, _ = self._snapshot(kind)
        return ids, rows[:, : self.dim] if isinstance(rows, np.ndarray) else GatheredRows(rows.mapping, rows.row_of,
                                                                                          self.dim)

    def rows(self, kind: str) -> tuple[np.ndarray, np.ndarray | GatheredRows]:
        """(ids (N,), rows [vector, -bias] (N, dim + 1)) of every item of ``kind`` in ``matrix`` order."""
        _, ids, rows, _ = self._snapshot(kind)
        return ids, rows

    def biases(self, kind: str) -> np.ndarray | None:
        """Normalisation biases (N,) in ``matrix`` order, or None unless every item of ``kind`` has one
        from the current bank (until then searches rank by the plain score)."""
        biases = self._snapshot(kind)[3]
        return biases if self._stored_bank_current() and not np.isnan(biases).any() else None

    def _snapshot(self, kind: str) -> tuple[int, np.ndarray, Any, np.ndarray]:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        generation = self.generation
        held = self._matrices.get(kind)
        if held is None or held[0] != generation:
            held = (generation, *self._load_matrix(kind))
            self._matrices[kind] = held
        return held

    def _load_matrix(self, kind: str) -> tuple[np.ndarray, Any, np.ndarray]:
        """(ids, rows, biases) of ``kind`` in id order: a slice of the mapped file where it is in id order
        with no unused row (as a compacted or only appended file is), else rows gathered on indexing."""
        cursor = self.db.execute(f"SELECT id, {self._ref}, {self._bias} FROM items WHERE kind = ? ORDER BY id", (kind,))
        if self._ref == "vector":  # an old read-only collection: its vectors are read into memory
            found = cursor.fetchall()
            ids = np.array([r[0] for r in found], dtype=np.int64)
            biases = np.array([np.nan if r[2] is None else r[2] for r in found], dtype=np.float32)
            rows = np.zeros((len(found), self.dim + 1), dtype=np.float32)
            if found:
                rows[:, : self.dim] = self._vectors(kind, [r[1] for r in found])
                rows[:, self.dim] = -np.nan_to_num(biases)
            return ids, rows, biases
        table = np.fromiter(((i, r, np.nan if b is None else b) for i, r, b in cursor),
                            dtype=[("id", np.int64), ("row", np.int64), ("bias", np.float32)])
        mapping = self._mapping(kind)
        if np.array_equal(table["row"], np.arange(len(table))):
            return table["id"], mapping[: len(table)], table["bias"]
        return table["id"], GatheredRows(mapping, table["row"], self.dim + 1), table["bias"]

    def compact(self, kind: str, unused: float = MAX_UNUSED) -> bool:
        """Rewrite the vector file of ``kind`` with only the rows items use, in id order, when over ``unused``
        of its rows are unused (deleted or rewritten items); returns whether it did. The new file is durable
        before the transaction that points the items at it commits; the old one stays while an index searches
        it (the index manager removes it)."""
        name, count = self.vector_file(kind)
        if self.read_only or count - self.count(kind) <= unused * count:
            return False
        with self.transaction() as db:
            table = np.fromiter(db.execute("SELECT id, vector_row FROM items WHERE kind = ? ORDER BY id", (kind,)),
                                dtype=[("id", np.int64), ("row", np.int64)])
            new = self.files.new_name(kind, self._writing)
            self.files.copy(name, count, table["row"], new)
            db.executemany("UPDATE items SET vector_row = ? WHERE id = ?",
                           zip(range(len(table)), table["id"].tolist(), strict=True))
            self.set_vector_file(db, kind, new, len(table))
        return True

    # -- normalisation biases ----------------------------------------------------------------------

    def with_biases(self, items: list[NewItem]) -> list[NewItem]:
        """Set the bias of items about to be stored (one batched computation per kind), when the stored
        biases are the current bank's (else ``fill_biases`` recomputes them all, these included)."""
        if self._bank_is_current():
            for kind in KINDS:
                todo = [it for it in items if it.kind == kind]
                if todo:
                    for it, bias in zip(todo, self.bank.biases(kind, np.stack([it.vector for it in todo])),
                                        strict=True):
                        it.bias = float(bias)
        return items

    def replace_vectors(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Overwrite stored items' vectors in one transaction, with their biases from the current bank (left to
        ``fill_biases`` when the stored biases are another bank's)."""
        self._rewrite_rows(kind, ids, vectors, self.bank.biases(kind, vectors) if self._bank_is_current() else None)

    def _rewrite_rows(self, kind: str, ids: np.ndarray, vectors: np.ndarray, biases: np.ndarray | None) -> None:
        """Give stored items of ``kind`` new rows ``[vector, -bias]`` (``biases`` None: none yet) in one transaction,
        marked as written so that indexes read them (vector files are only appended to)."""
        with self.transaction() as db:
            stored = np.zeros(len(ids), np.float32) if biases is None else biases
            rows = self.stage_rows(kind, np.column_stack([vectors, -stored]))
            db.executemany("UPDATE items SET bias = ?, seq = ?, vector_row = ? WHERE id = ? AND kind = ?",
                           [(None if biases is None else float(biases[j]), self._writing, int(r), int(i), kind)
                            for j, (r, i) in enumerate(zip(rows, ids, strict=True))])

    def recorded(self, key: str) -> str | None:
        """A value the collection recorded about how its items were made (``record``)."""
        return self._meta(key)

    def record(self, key: str, value: str) -> None:
        """Record ``value`` under ``key``, atomically."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def fill_biases(self, batch: int = 4096) -> int:
        """Compute the biases items lack (all of them when the bank changed); returns how many were written.

        Each batch is one transaction (``_rewrite_rows``: their rows appended again, with the new bias), so
        indexes pick up the new scores.
        """
        bank_id = self.bank.id if self.bank is not None else ""
        stale = "1" if self._meta("bank") != bank_id else "bias IS NULL"
        done = 0
        for kind in KINDS:
            ids = self.ids_where(f"kind = ? AND {stale}", (kind,)) if bank_id else np.zeros(0, np.int64)
            for start in range(0, len(ids), batch):
                chunk = ids[start:start + batch]
                vectors, _ = self.vectors_of(chunk)
                self._rewrite_rows(kind, chunk, vectors, self.bank.biases(kind, vectors))
                done += len(chunk)
        if self._meta("bank") != bank_id:
            with self.transaction() as db:
                if not bank_id:
                    db.execute("UPDATE items SET bias = NULL, seq = ?", (self.generation + 1,))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('bank', ?)", (bank_id,))
        return done

    # -- reranker photo tokens ---------------------------------------------------------------------

    def put_tokens(self, db: sqlite3.Connection, hash_: str, tokens: np.ndarray, words: np.ndarray | None = None
                   ) -> None:
        """Store the reranker's tokens of the photo with content ``hash_`` (float16) and, when it has a word
        classifier, the photo's likeliest words (rerank/words.py), marking the photos with that content as
        written in this generation, so that the sparse index reads them."""
        db.execute("INSERT OR REPLACE INTO rerank_tokens VALUES (?, ?, ?)",
                   (hash_, self.reranker.tokens_fingerprint, np.ascontiguousarray(tokens, dtype=np.float16).tobytes()))
        if words is not None and self.reranker.words_fingerprint:
            db.execute("INSERT OR REPLACE INTO rerank_tokens VALUES (?, ?, ?)",
                       (hash_, self.reranker.words_fingerprint,
                        np.ascontiguousarray(words, dtype=WORD_RECORD).tobytes()))
            db.execute("UPDATE items SET seq = ? WHERE kind = 'image' AND hash = ? AND seq != ?",
                       (self._writing, hash_, self._writing))

    def tokens(self, ids: np.ndarray) -> np.ndarray | None:
        """The stored reranker tokens (n, T, d) of photos by id, or None when any of them has none."""
        shape = (self.reranker.tokens, self.reranker.d)
        chunk = [int(i) for i in ids]
        rows = self._stored_per_photo(chunk, self.reranker.tokens_fingerprint)
        if len(rows) < len(set(chunk)):
            return None
        return np.stack([np.frombuffer(rows[i], dtype=np.float16).reshape(shape) for i in chunk])

    def photo_words(self, ids: np.ndarray) -> list[np.ndarray | None]:
        """The stored likeliest words (``WORD_RECORD``) of photos by id; None for a photo that has none (stored
        before its reranker had a word classifier: the next ``index`` adds them)."""
        rows: dict[int, bytes] = {}
        if self.reranker is not None and self.reranker.words_fingerprint and self.has_tokens():
            wanted = [int(i) for i in ids]
            for start in range(0, len(wanted), 900):  # under SQLite's limit on a statement's parameters
                rows |= self._stored_per_photo(wanted[start:start + 900], self.reranker.words_fingerprint)
        return [np.frombuffer(rows[int(i)], dtype=WORD_RECORD) if int(i) in rows else None for i in ids]

    def _stored_per_photo(self, ids: list[int], key: str) -> dict[int, bytes]:
        """What is stored under ``key`` (tokens, words) for the content of each of these photos, by id."""
        marks = ",".join("?" * len(ids))
        return dict(self.db.execute(
            f"SELECT items.id, t.tokens FROM items JOIN rerank_tokens t ON t.hash = items.hash AND t.reranker = ? "
            f"WHERE items.id IN ({marks})", [key, *ids]).fetchall())

    def missing_tokens(self) -> list[Item]:
        """Photos whose content has no tokens of the current reranker, or no words of its word classifier (stored
        before they existed)."""
        if self.reranker is None:
            return []
        lacking = "hash NOT IN (SELECT hash FROM rerank_tokens WHERE reranker = ?)"
        if self.reranker.words_fingerprint is None:
            return self.select(f"kind = 'image' AND {lacking}", (self.reranker.tokens_fingerprint,))
        return self.select(f"kind = 'image' AND ({lacking} OR {lacking})",
                           (self.reranker.tokens_fingerprint, self.reranker.words_fingerprint))

    def drop_stale_tokens(self) -> None:
        """Forget tokens of content no longer stored or of another reranker (one atomic statement; tokens are
        not part of the snapshot, so the generation stays)."""
        keys = (self.reranker.tokens_fingerprint, self.reranker.words_fingerprint or "") if self.reranker else ("", "")
        self.db.execute("DELETE FROM rerank_tokens WHERE reranker NOT IN (?, ?) OR hash NOT IN "
                        "(SELECT hash FROM items WHERE kind = 'image')", keys)

    def _stored_bank_current(self) -> bool:
        """Were the stored biases computed with the current bank?"""
        return self.bank is not None and self._meta("bank") == self.bank.id

    def _bank_is_current(self) -> bool:
        """Are stored biases the current bank's? A store with no biases yet adopts the bank at once."""
        if self.bank is None:
            return False
        if self._stored_bank_current():
            return True
        if self.db.execute("SELECT 1 FROM items WHERE bias IS NOT NULL LIMIT 1").fetchone() is None:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('bank', ?)", (self.bank.id,))  # one atomic write
            return True
        return False

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def has_tokens(self) -> bool:
        """Does the store have the reranker tokens table (an old read-only collection may not)?"""
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'rerank_tokens'").fetchone() is not None

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())


def _field(key: str) -> str:
    """SQL for one field's value (a fixed field name: indexes match the expression exactly)."""
    return f"json_extract(fields, '$.{key}')"


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Open the database without writing anything: read-only, or immutable where SQLite cannot even
    create its shared-memory file beside it (a read-only mount)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the collection is read-only, so it cannot be created)")
    for mode in ("mode=ro", "immutable=1"):
        db = sqlite3.connect(f"{path.absolute().as_uri()}?{mode}", uri=True, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("SELECT COUNT(*) FROM items").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
    raise sqlite3.OperationalError(f"cannot open {path} for reading")
