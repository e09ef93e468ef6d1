"""HNSW graph search (FAISS): milliseconds per query at high recall, for collections that fit in memory.

FAISS cannot delete from an HNSW graph, so deleted items become tombstones that searches skip, and
the owner rebuilds the graph once tombstones pass a share of the index (see ``stale_fraction``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .base import VectorIndex, VectorLookup, as_ids, as_vectors, exact_rescore
from .flat import BYTES_PER_DIM, STORAGE


class HNSWIndex(VectorIndex):
    """``m`` links per node, ``ef_construction`` build effort, ``ef_search`` query effort (recall
    knob); ``storage`` int8/fp16 shrinks the stored vectors, int8 rescoring its candidates exactly."""

    kind = "hnsw"

    def __init__(self, dim: int, m: int = 32, ef_construction: int = 80, ef_search: int = 64,
                 storage: str = "fp32", index: Any = None) -> None:
        if index is None:
            index = (faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT) if storage == "fp32"
                     else faiss.IndexHNSWSQ(dim, STORAGE[storage], m, faiss.METRIC_INNER_PRODUCT))
            index.hnsw.efConstruction = ef_construction
        super().__init__(dim, index, m=m, ef_construction=ef_construction, ef_search=ef_search, storage=storage)
        self.labels = np.zeros(0, dtype=np.int64)  # internal node -> item id
        self.alive = np.zeros(0, dtype=bool)

    @property
    def rescores(self) -> bool:  # type: ignore[override]
        return self.params["storage"] == "int8"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        self.remove(ids)  # a re-embedded item: its old node becomes a tombstone
        self.index.add(as_vectors(vectors))
        self.labels = np.concatenate([self.labels, ids])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), dtype=bool)])

    def remove(self, ids: np.ndarray) -> None:
        if len(self.labels):
            self.alive &= ~np.isin(self.labels, as_ids(ids))

    @property
    def stale_fraction(self) -> float:
        """Share of graph nodes that are tombstones."""
        return 1.0 - float(self.alive.mean()) if len(self.alive) else 0.0

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               lookup: VectorLookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        mask = self.alive if allowed is None else self.alive & np.isin(self.labels, as_ids(allowed))
        fetch = k * 3 if self.rescores and lookup is not None else k
        params = faiss.SearchParametersHNSW(efSearch=max(self.params["ef_search"], fetch))
        bitmap = None
        if not mask.all():
            bitmap = np.packbits(mask, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        scores, internal = self.index.search(as_vectors(queries), fetch, params=params)  # bitmap still referenced
        ids = np.where(internal >= 0, self.labels[np.maximum(internal, 0)], -1)
        if fetch != k:
            return exact_rescore(queries, ids, k, lookup)
        return scores, ids

    @property
    def ntotal(self) -> int:
        return int(self.alive.sum())

    @property
    def nbytes(self) -> int:
        n = len(self.labels)
        code = self.dim * BYTES_PER_DIM[self.params["storage"]]
        links = self.index.hnsw.neighbors.size() * 4 + self.index.hnsw.offsets.size() * 8
        return n * (code + 8 + 1) + links

    def _save_extra(self, path: Path) -> None:
        np.save(path.with_suffix(".labels.npy"), self.labels)
        np.save(path.with_suffix(".alive.npy"), self.alive)

    def _load_extra(self, path: Path) -> None:
        self.labels = np.load(path.with_suffix(".labels.npy"))
        self.alive = np.load(path.with_suffix(".alive.npy"))
        if not len(self.labels) == len(self.alive) == self.index.ntotal:
            raise ValueError(f"{path.name} holds {self.index.ntotal} nodes but {len(self.labels)} labels "
                             f"and {len(self.alive)} flags")
