"""Keyword search (BM25) over every item's words: its text, file name, folders and text fields, with
SQLite FTS5 in the collection's own database.

The ``keywords`` table is kept in step with ``items`` by triggers, so every write that puts, moves,
renames, re-fields or deletes an item changes its keywords in the same transaction: the two can never
disagree, whichever code path wrote. A collection made before this table existed gets it, filled from
its items, the first time it is opened for writing. Words are folded (case, accents) and stemmed (Porter:
"dogs" finds "dog"); file names split at ``_``, ``-`` and ``.`` ("IMG_2023_paris.jpg": img, 2023, paris,
jpg). A query's words are alternatives ranked by BM25; a "quoted phrase" must appear as written.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from functools import lru_cache, partial

import numpy as np

VERSION = "1"  # bump when the columns or the tokenizer change: the table is then built again
TOKENIZER = "porter unicode61 remove_diacritics 2"
# BM25 weights of the columns kind (not searched), name, folders, text, fields.
WEIGHTS = (0.0, 2.0, 1.0, 1.0, 2.0)
# Words that say little about which item is meant; left out of a query unless it has nothing else.
STOPWORDS = frozenset({"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "into",
                       "is", "it", "its", "of", "on", "or", "that", "the", "their", "there", "this", "to", "was",
                       "were", "with"})

_PATH = "replace(CAST({row}.path AS TEXT), '\\', '/')"
_FOLDER = f"length(rtrim({_PATH}, replace({_PATH}, '/', '')))"  # length of the folder part, up to its last /
_COLUMNS = "rowid, kind, name, folders, text, fields"
_VALUES = (f"{{row}}.id, {{row}}.kind, substr({_PATH}, {_FOLDER} + 1), substr({_PATH}, 1, {_FOLDER}), "
           "{row}.text, (SELECT group_concat(value, ' ') FROM json_each({row}.fields) WHERE type = 'text')")
SCHEMA = (
    f"CREATE VIRTUAL TABLE keywords USING fts5(kind UNINDEXED, name, folders, text, fields, tokenize = '{TOKENIZER}')",
    f"CREATE TRIGGER keywords_insert AFTER INSERT ON items BEGIN "
    f"INSERT INTO keywords ({_COLUMNS}) VALUES ({_VALUES.format(row='NEW')}); END",
    f"CREATE TRIGGER keywords_update AFTER UPDATE OF id, kind, path, text, fields ON items BEGIN "
    f"DELETE FROM keywords WHERE rowid = OLD.id; "
    f"INSERT INTO keywords ({_COLUMNS}) VALUES ({_VALUES.format(row='NEW')}); END",
    "CREATE TRIGGER keywords_delete AFTER DELETE ON items BEGIN DELETE FROM keywords WHERE rowid = OLD.id; END",
)
DROP = ("DROP TRIGGER IF EXISTS keywords_insert", "DROP TRIGGER IF EXISTS keywords_update",
        "DROP TRIGGER IF EXISTS keywords_delete", "DROP TABLE IF EXISTS keywords")
_PHRASE = re.compile(r'"([^"]*)"')
_WORD = re.compile(r"\w+")


class NoKeywordIndex(ValueError):
    """Keyword search asked of a collection that has no keyword table (an old one, opened read-only)."""


def ensure(db: sqlite3.Connection) -> None:
    """Create the keyword table and its triggers and fill it from the items, unless it is current (one
    transaction; a second process doing the same waits, then finds it done)."""
    if _version(db) == VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if _version(db) != VERSION:
            for statement in (*DROP, *SCHEMA):
                db.execute(statement)
            db.execute(f"INSERT INTO keywords ({_COLUMNS}) SELECT {_VALUES.format(row='items')} FROM items")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('keywords', ?)", (VERSION,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def memory_index(rows: list[tuple[int, str, str | None, str | None]]) -> sqlite3.Connection:
    """A keyword table in memory over (id, kind, path, text) rows (eval's photos and captions), filled by the
    same triggers as a collection's."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, kind TEXT, path TEXT, text TEXT, fields TEXT DEFAULT '{}')")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    ensure(db)
    db.executemany("INSERT INTO items (id, kind, path, text) VALUES (?, ?, ?, ?)", rows)
    return db


def available(db: sqlite3.Connection) -> bool:
    return _version(db) == VERSION


def match_expression(query: str, held_widely: Callable[[str], bool] | None = None) -> str | None:
    """An FTS5 query for a user's words: "quoted phrases" are required, other words are alternatives
    (stopwords, and words ``held_widely``, left out when others remain); None when there is no word at all."""
    phrases = [p.split() for p in _PHRASE.findall(query)]
    phrases = [" ".join(_WORD.findall(" ".join(p))) for p in phrases]
    phrases = [f'"{p}"' for p in phrases if p]
    words = [w.lower() for w in _WORD.findall(_PHRASE.sub(" ", query))]
    kept = [w for w in words if w not in STOPWORDS] or words
    if held_widely is not None:
        kept = [w for w in kept if not held_widely(w)] or kept
    terms = list(dict.fromkeys(f'"{w}"' for w in kept))
    if phrases:
        required = " AND ".join(phrases)
        return f"{required} AND ({' OR '.join(terms + phrases)})" if terms else required
    return " OR ".join(terms) or None


def search(db: sqlite3.Connection, query: str, kind: str, k: int, allowed: np.ndarray | None = None,
           generation: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` items of ``kind`` (among ``allowed`` ids, if given) that match ``query`` best by BM25:
    (scores, ids), highest first (scores are positive; equal scores keep the lower id first).

    Words that half the rows or more hold are left out when others remain: BM25 gives them no weight, yet
    ranking their matches would read every one (a folder all photos share). ``generation``, the store's,
    lets their counts be remembered until it changes."""
    if not available(db):
        raise NoKeywordIndex("this collection has no keyword index yet: run `crossmodal index` on it once "
                             "with write access (or open it from Python without read-only)")
    expression = match_expression(query, partial(_held_widely, db, generation))
    if expression is None or k < 1 or (allowed is not None and not len(allowed)):
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    rank = f"bm25(keywords, {', '.join(map(str, WEIGHTS))})"
    sql = f"SELECT rowid, -{rank} AS score FROM keywords WHERE keywords MATCH ? AND kind = ?"
    params: list[object] = [expression, kind]
    if allowed is not None:
        sql += " AND rowid IN (SELECT value FROM json_each(?))"
        params.append(json.dumps([int(i) for i in allowed]))
    rows = db.execute(f"{sql} ORDER BY score DESC, rowid LIMIT ?", [*params, k]).fetchall()
    return (np.array([r[1] for r in rows], dtype=np.float32).reshape(-1),
            np.array([r[0] for r in rows], dtype=np.int64).reshape(-1))


def _held_widely(db: sqlite3.Connection, generation: int | None, word: str) -> bool:
    """Whether half the keyword rows or more hold ``word``: FTS5's BM25 clamps such a word's idf,
    log((N - n + 0.5) / (n + 0.5)) with n of N rows holding it, to 1e-6 (counts cached per ``generation``,
    none when it is None)."""
    holding, rows = (_holding, _rows) if generation is not None else (_holding.__wrapped__, _rows.__wrapped__)
    n = holding(db, generation, word)
    return n > 0 and 2 * n >= rows(db, generation)


@lru_cache(maxsize=4096)
def _holding(db: sqlite3.Connection, generation: int | None, word: str) -> int:
    return db.execute("SELECT count(*) FROM keywords WHERE keywords MATCH ?", (f'"{word}"',)).fetchone()[0]


@lru_cache(maxsize=64)
def _rows(db: sqlite3.Connection, generation: int | None) -> int:
    return db.execute("SELECT count(*) FROM keywords").fetchone()[0]


def _version(db: sqlite3.Connection) -> str | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'keywords'").fetchone()
    except sqlite3.OperationalError:  # no meta table: not a store
        return None
    return row[0] if row else None
