"""Photos pruned from a collection, remembered for a while so that one that comes back keeps its id and fields.

A photo is pruned when its file is gone at the end of a complete scan, but files come back: a disk is
mounted again, a sync tool restores a folder, a user undoes a delete. Pruning keeps a small record of
each photo (id, content hash, path, fields) in the ``pruned`` table for ``KEEP_DAYS`` days; a new file
with the same content takes that id and those fields back. Ids are never reused (AUTOINCREMENT), so
the old id is free. The table is created by the first prune, so older collections need no migration.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from .paths import decode_path, encode_path
from .store import Item

KEEP_DAYS = 90
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pruned (id INTEGER PRIMARY KEY, hash TEXT NOT NULL, path, "
    "fields TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pruned_hash ON pruned(hash)",
)


@dataclass
class Pruned:
    """One remembered photo: the id and fields it had, and where it was."""

    id: int
    path: str | None
    fields: dict[str, Any]


def remember(db: sqlite3.Connection, items: list[Item]) -> None:
    """Record photos being pruned (in the transaction that deletes them) and forget records over ``KEEP_DAYS``."""
    for statement in SCHEMA:
        db.execute(statement)
    now = time.time()
    db.execute("DELETE FROM pruned WHERE at < ?", (now - KEEP_DAYS * 86400,))
    db.executemany("INSERT OR REPLACE INTO pruned VALUES (?, ?, ?, ?, ?)",
                   [(it.id, it.hash, encode_path(it.path), json.dumps(it.fields), now) for it in items])


def recall(db: sqlite3.Connection) -> dict[str, list[Pruned]]:
    """The remembered photos by content hash, the most recently pruned first (none before the first prune)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pruned'").fetchone() is None:
        return {}
    out: dict[str, list[Pruned]] = {}
    for id_, hash_, path, fields in db.execute("SELECT id, hash, path, fields FROM pruned ORDER BY at DESC, id"):
        out.setdefault(hash_, []).append(Pruned(id_, decode_path(path), json.loads(fields)))
    return out


def pick(candidates: list[Pruned], path: str, taken: set[int]) -> Pruned | None:
    """The remembered photo a returning file is: the one last at its path, else the latest not yet taken."""
    free = [p for p in candidates if p.id not in taken]
    return next((p for p in free if p.path == path), free[0] if free else None)


def restore(db: sqlite3.Connection, new_id: int, old: Pruned) -> None:
    """Give a just-stored item the id of the pruned photo it is, and forget the record."""
    db.execute("UPDATE items SET id = ? WHERE id = ?", (old.id, new_id))
    db.execute("DELETE FROM pruned WHERE id = ?", (old.id,))
