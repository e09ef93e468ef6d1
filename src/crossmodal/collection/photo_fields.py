"""Photo metadata (EXIF/IPTC/XMP, sources/metadata.py) merged into each photo's fields, the user's winning.

What a file said is remembered per content hash in the ``photo_meta`` table (with the reader's version),
so the fields a user set (``--field``, a caption column, the API) can be told apart from those that came
from the file: when a photo changes, or is read again by a newer reader, its file fields are replaced and
the user's are kept. Photos stored before metadata was read get it on the next ``index`` (``missing``),
from the file's header, without encoding anything again. The table is created by the first write, so
older collections need no migration.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..sources.metadata import VERSION

SCHEMA = "CREATE TABLE IF NOT EXISTS photo_meta (hash TEXT PRIMARY KEY, version INTEGER NOT NULL, fields TEXT NOT NULL)"


def exists(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'photo_meta'").fetchone() is not None


def stored(db: sqlite3.Connection, hashes: set[str]) -> dict[str, dict[str, Any]]:
    """What each content's file said when last read, by hash (contents never read are left out)."""
    if not hashes or not exists(db):
        return {}
    chunk = sorted(hashes)
    marks = ",".join("?" * len(chunk))
    return {h: json.loads(f) for h, f in db.execute(f"SELECT hash, fields FROM photo_meta WHERE hash IN ({marks})",
                                                    chunk)}


def remember(db: sqlite3.Connection, hash_: str, fields: dict[str, Any]) -> None:
    """Record what the file with content ``hash_`` says (call inside the transaction that stores it)."""
    db.execute(SCHEMA)
    db.execute("INSERT OR REPLACE INTO photo_meta VALUES (?, ?, ?)", (hash_, VERSION, json.dumps(fields)))


def merged(fields: dict[str, Any], old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    """A photo's fields with its file's fields ``new`` in place of ``old`` (what the file said before):
    entries of ``fields`` that ``old`` explains are replaced; every other entry is the user's and wins."""
    own = {k: v for k, v in fields.items() if not (old and k in old and old[k] == v)}
    return {**(new or {}), **own}


def missing_sql() -> str:
    """WHERE text selecting stored photos whose content was not read by the current reader."""
    return (f"kind = 'image' AND hash NOT IN (SELECT hash FROM photo_meta WHERE version = {VERSION})")


def forget_stale(db: sqlite3.Connection) -> None:
    """Drop what is remembered of contents no longer stored."""
    if exists(db):
        db.execute("DELETE FROM photo_meta WHERE hash NOT IN (SELECT hash FROM items WHERE kind = 'image')")
