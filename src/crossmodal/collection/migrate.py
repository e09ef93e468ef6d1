"""Moving the vectors of a collection written before vector files out of its SQLite rows, once, on open.

Every vector is copied into its kind's vector file (fsynced), then one transaction points each item at its
row and drops the ``vector`` column: a crash before that commit leaves the old layout, which the next open
migrates again; after it, the new one. The freed database pages and the old ``cache/`` snapshots are
removed afterwards.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .store import ItemStore

BATCH = 10_000


def vectors_to_files(store: ItemStore) -> None:
    """Migrate ``store`` (writable, with a ``vector`` column) to vector files without losing an item."""
    from .store import CACHE, KINDS

    print(f"{store.folder}: moving the vectors into vector files (once, for this version)", file=sys.stderr)
    if "vector_row" not in store._columns():
        store.db.execute("ALTER TABLE items ADD COLUMN vector_row INTEGER")
    with store.transaction() as db:
        for kind in KINDS:
            rows: list[tuple[int, int]] = []
            name, done = f"{kind}.f32", 0
            cursor = db.execute(f"SELECT id, vector, {store._bias} FROM items WHERE kind = ? ORDER BY id", (kind,))
            while batch := cursor.fetchmany(BATCH):
                vectors = np.stack([np.frombuffer(blob, dtype=np.float32) for _, blob, _ in batch])
                biases = np.array([b or 0.0 for _, _, b in batch], dtype=np.float32)
                store.files.append(name, done, np.column_stack([vectors, -biases]))
                rows += [(done + i, item_id) for i, (item_id, _, _) in enumerate(batch)]
                done += len(batch)
            db.executemany("UPDATE items SET vector_row = ? WHERE id = ?", rows)
            store.set_vector_file(db, kind, name, done)
        db.execute("ALTER TABLE items DROP COLUMN vector")
    try:
        store.db.execute("VACUUM")  # give back the pages the vectors held
    except sqlite3.OperationalError as e:  # e.g. a full disk: the pages are reused by later writes instead
        print(f"could not compact {store.folder} ({e})", file=sys.stderr)
    shutil.rmtree(store.folder / CACHE, ignore_errors=True)
