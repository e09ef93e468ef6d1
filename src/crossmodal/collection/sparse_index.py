"""A collection's sparse indexes (search/sparse.py), one per item kind, derived from what the store holds.

The rows are the sparse model's (``heads``): sparse heads applied to the stored vectors (the sparse retriever's
index, ``index/sparse-{kind}.npz``: a collection's own ``sparse.npz``, else the heads its model ships), or a
reranker's word classifier's stored words of each photo and each text's own words (the hybrid retriever's
evidence, ``index/words-{kind}.npz``, search/sparse_words.py); no photo is read again. An index is brought up
to date when the store's generation changes (rows of items written since, and of new items, are encoded; the
rest are kept) and saved atomically, with the generation and model it reflects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..search.sparse import SparseIndex, SparseModel
from .atomic import atomic_write
from .store import ItemStore

FILE = "index/{name}-{kind}.npz"


class SparseIndexes:
    """The sparse index of each item kind of one collection, up to date with its store."""

    def __init__(self, folder: Path, store: ItemStore, heads: SparseModel | None, name: str = "sparse") -> None:
        self.folder, self.store, self.heads, self.name = Path(folder), store, heads, name
        self._cache: dict[str, tuple[int, SparseIndex]] = {}

    def get(self, kind: str) -> SparseIndex | None:
        """The index of ``kind`` (None when the model has no sparse model)."""
        if self.heads is None:
            return None
        generation = self.store.generation
        held = self._cache.get(kind)
        if held is not None and held[0] == generation:
            return held[1]
        index = self._build(kind, generation)
        self._cache[kind] = (generation, index)
        return index

    def _build(self, kind: str, generation: int) -> SparseIndex:
        ids, vectors = self.store.matrix(kind)
        old = self._load(kind)
        keep = np.zeros(len(ids), dtype=bool)
        rows = None
        if old is not None:
            old_generation, old_index = old
            fresh = ~np.isin(old_index.ids, self.store.written_since(kind, old_generation))
            present = np.isin(old_index.ids, ids) & fresh
            keep = np.isin(ids, old_index.ids[present])
            if present.all() and keep.all():  # none of its items changed (the store wrote something else)
                return old_index
            rows = old_index.rows[np.flatnonzero(present)]
        from scipy import sparse  # only to update an index: a search of an unchanged one stays light

        todo = np.flatnonzero(~keep)
        new = self.heads.item_rows(kind, self.store, ids[todo], np.asarray(vectors[todo])) if len(todo) else None
        parts = [(ids[keep], rows), (ids[todo], new)]
        parts = [(i, r) for i, r in parts if r is not None and len(i)]
        if parts:
            all_ids = np.concatenate([i for i, _ in parts])
            order = np.argsort(all_ids, kind="stable")
            matrix = sparse.vstack([r for _, r in parts], format="csr")[order]
            index = SparseIndex(all_ids[order], matrix)
        else:
            index = SparseIndex(np.zeros(0, np.int64), sparse.csr_matrix((0, len(self.heads.vocab)), dtype=np.float32))
        if len(todo) and not self.store.read_only:
            self._save(kind, index, generation)
        return index

    def _path(self, kind: str) -> Path:
        return self.folder / FILE.format(name=self.name, kind=kind)

    def _load(self, kind: str) -> tuple[int, SparseIndex] | None:
        path = self._path(kind)
        try:
            with np.load(path) as f:
                state = json.loads(str(f["state"]))
                if state["heads"] != self.heads.id:
                    return None
                rows = (f["data"].astype(np.float32), f["indices"], f["indptr"], len(self.heads.vocab))
                return state["generation"], SparseIndex(f["ids"], rows)  # no SciPy: a cold search stays fast
        except (OSError, KeyError, ValueError):
            return None

    def _save(self, kind: str, index: SparseIndex, generation: int) -> None:
        state = json.dumps({"generation": generation, "heads": self.heads.id})
        self._path(kind).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(kind), lambda f: np.savez(f, ids=index.ids, data=index.data.astype(np.float16),
                                                          indices=index.indices.astype(np.int32),
                                                          indptr=index.indptr, state=state))
