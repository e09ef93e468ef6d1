"""Exact search with FAISS: every vector scored, batched as a matrix product; float32, float16 or int8."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .base import VectorIndex, VectorLookup, as_vectors, exact_rescore, selector

BYTES_PER_DIM = {"fp32": 4, "fp16": 2, "int8": 1}
STORAGE = {"fp16": faiss.ScalarQuantizer.QT_fp16, "int8": faiss.ScalarQuantizer.QT_8bit}


class FlatIndex(VectorIndex):
    """Exact inner product. ``storage`` fp16 halves memory with no measurable recall loss; int8
    quarters it and rescores the top candidates with the stored float32 vectors."""

    kind = "flat"

    def __init__(self, dim: int, storage: str = "fp32", index: Any = None) -> None:
        if index is None:
            inner = (faiss.IndexFlatIP(dim) if storage == "fp32"
                     else faiss.IndexScalarQuantizer(dim, STORAGE[storage], faiss.METRIC_INNER_PRODUCT))
            index = faiss.IndexIDMap2(inner)
        super().__init__(dim, index, storage=storage)

    @property
    def rescores(self) -> bool:  # type: ignore[override]
        return self.params["storage"] == "int8"

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               lookup: VectorLookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        sel = selector(allowed)
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
        fetch = k * 4 if self.rescores and lookup is not None else k
        scores, ids = self.index.search(as_vectors(queries), fetch, params=params)
        if fetch != k:
            return exact_rescore(queries, ids, k, lookup)
        return scores, ids

    @property
    def nbytes(self) -> int:
        return self.ntotal * (self.dim * BYTES_PER_DIM[self.params["storage"]] + 8)
