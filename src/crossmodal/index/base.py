"""The one interface of every vector index kind, and the pieces they share (FAISS I/O, filters)."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

# Given ids, return their stored full-precision vectors (rows in the same order).
VectorLookup = Callable[[np.ndarray], np.ndarray]
# Allowed sets up to this size (or 2% of the index) are searched exactly instead of through the index.
EXACT_SUBSET = 20_000


class VectorIndex(ABC):
    """Inner-product search over (id, vector) pairs. Scores of the returned ids are exact when the
    kind rescores its candidates (or stores full vectors); ids are -1 where fewer than k are found."""

    kind: ClassVar[str]
    rescores: ClassVar[bool] = False

    def __init__(self, dim: int, index: Any, **params: Any) -> None:
        self.dim = dim
        self.index = index  # the FAISS index
        self.params = params

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def train(self, vectors: np.ndarray) -> None:
        """Learn what the kind needs from a sample (quantizer codebooks, value ranges)."""
        self.index.train(as_vectors(vectors))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add items; an id already present is replaced (a re-embedded item)."""
        self.remove(ids)
        self.index.add_with_ids(self._codes(vectors), as_ids(ids))

    def remove(self, ids: np.ndarray) -> None:
        if self.index.ntotal:
            self.index.remove_ids(faiss.IDSelectorBatch(as_ids(ids)))

    def _codes(self, vectors: np.ndarray) -> np.ndarray:
        """What the FAISS index stores for ``vectors`` (binary codes override this)."""
        return as_vectors(vectors)

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               lookup: VectorLookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), ids (Q, k)); ``allowed`` restricts candidates to those ids;
        ``lookup`` gives stored vectors for exact rescoring."""

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Memory the index itself holds (stored full vectors read through ``lookup`` not counted)."""

    def query(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
              lookup: VectorLookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Search with filters that always give a full page when enough items match.

        A small allowed set is searched exactly (cheaper than filtering a graph or inverted lists);
        a large one goes through the index with an id selector, and any query that comes back short
        (graph search can miss isolated matches) is answered exactly on the allowed set.
        """
        queries = np.atleast_2d(as_vectors(queries))
        if allowed is not None and lookup is not None and len(allowed) <= max(EXACT_SUBSET, self.ntotal // 50):
            return exact_subset(queries, as_ids(allowed), k, lookup)
        scores, ids = self.search(queries, k, allowed, lookup)
        if allowed is not None and lookup is not None:
            short = np.flatnonzero((ids >= 0).sum(1) < min(k, len(allowed)))
            if len(short):
                scores[short], ids[short] = exact_subset(queries[short], as_ids(allowed), k, lookup)
        return scores, ids

    def save(self, path: Path) -> None:
        """Write the FAISS index and a JSON sidecar (kind, dimension, parameters) straight to disk; the
        caller writes into a fresh folder and swaps it in whole (collection/generations.py)."""
        write = faiss.write_index_binary if isinstance(self.index, faiss.IndexBinary) else faiss.write_index
        write(self.index, str(path))
        self._save_extra(path)
        path.with_suffix(".json").write_text(json.dumps({"kind": self.kind, "dim": self.dim, "params": self.params}))

    def _save_extra(self, path: Path) -> None:  # noqa: B027 - only kinds with state beyond FAISS
        """Write state FAISS does not hold (e.g. HNSW tombstones) beside the index."""

    def _load_extra(self, path: Path) -> None:  # noqa: B027 - the counterpart of _save_extra
        """Read what ``_save_extra`` wrote."""


def read_faiss(path: Path, mmap: bool, binary: bool = False, in_place: bool = False) -> Any:
    """Read a FAISS index, memory-mapped when asked (FAISS maps the kinds that support it); ``in_place``
    maps the stored vectors of a graph index without copying them (the index is then read-only)."""
    flags = 0
    if mmap:
        flags = faiss.IO_FLAG_MMAP_IFC if in_place else faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
        _read_ahead(path)
    if binary:
        return faiss.read_index_binary(str(path), flags)
    return faiss.read_index(str(path), flags)


def _read_ahead(path: Path) -> None:
    """Ask the kernel to load a mapped file into the page cache in the background, so searches right after
    a fast (mapped) open do not each wait on disk reads for the pages they touch."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def as_ids(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64)


def as_vectors(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def selector(allowed: np.ndarray | None, excluded: np.ndarray | None = None) -> Any:
    """A FAISS id selector for "in allowed and not in excluded" (None when nothing is restricted)."""
    sel = faiss.IDSelectorBatch(as_ids(allowed)) if allowed is not None else None
    if excluded is not None and len(excluded):
        not_excluded = faiss.IDSelectorNot(faiss.IDSelectorBatch(as_ids(excluded)))
        sel = not_excluded if sel is None else faiss.IDSelectorAnd(sel, not_excluded)
    return sel


def exact_subset(queries: np.ndarray, allowed: np.ndarray, k: int, lookup: VectorLookup
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k restricted to ``allowed`` ids, read through ``lookup``."""
    from ..search.exact import topk

    scores, rows = topk(lookup(allowed), queries, k)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    out_scores[:, : scores.shape[1]] = scores
    out_ids[:, : rows.shape[1]] = allowed[rows]
    return out_scores, out_ids


def exact_rescore(queries: np.ndarray, candidates: np.ndarray, k: int, lookup: VectorLookup
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each query's candidate ids (-1 = none) by exact inner product with stored vectors."""
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for q, row in enumerate(candidates):
        row = row[row >= 0]
        if not len(row):
            continue
        scores = lookup(row) @ queries[q]
        order = np.lexsort((row, -scores))[:k]
        out_scores[q, : len(order)] = scores[order]
        out_ids[q, : len(order)] = row[order]
    return out_scores, out_ids
