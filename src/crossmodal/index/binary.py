"""Binary codes (the sign of each dimension after centring, 1 bit each) searched by Hamming distance
with FAISS, the top candidates rescored exactly from the stored full vectors: 32x smaller than
float32, very fast. Centring on the mean vector first matters: embeddings often share a direction,
and raw signs would then be nearly the same for every item."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .base import VectorIndex, VectorLookup, as_ids, as_vectors, exact_rescore


def binarize(vectors: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Pack the sign bits of each centred row: (N, dim) float -> (N, dim / 8) uint8."""
    return np.packbits(as_vectors(vectors) > center, axis=1)


class BinaryIndex(VectorIndex):
    """``rescore`` candidates per result are re-ranked with the stored vectors (needs dim % 8 == 0)."""

    kind = "binary"
    rescores = True

    def __init__(self, dim: int, rescore: int = 20, index: Any = None) -> None:
        if dim % 8:
            raise ValueError(f"binary codes need a dimension divisible by 8, not {dim}")
        super().__init__(dim, index if index is not None else faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(dim)),
                         rescore=rescore)
        self.center: np.ndarray | None = None

    @property
    def needs_training(self) -> bool:
        return self.center is None

    def train(self, vectors: np.ndarray) -> None:
        self.center = as_vectors(vectors).mean(axis=0)

    def _save_extra(self, path: Path) -> None:
        np.save(path.with_suffix(".center.npy"), self.center)

    def _load_extra(self, path: Path) -> None:
        self.center = np.load(path.with_suffix(".center.npy"))

    def _codes(self, vectors: np.ndarray) -> np.ndarray:
        return binarize(vectors, self.center)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               lookup: VectorLookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        fetch = k * self.params["rescore"]
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(as_ids(allowed)))
        distances, ids = self.index.search(binarize(queries, self.center), fetch, params=params)
        if lookup is None:  # without stored vectors: rank by Hamming similarity only
            scores = 1.0 - 2.0 * distances[:, :k].astype(np.float32) / self.dim
            return scores, ids[:, :k]
        return exact_rescore(queries, ids, k, lookup)

    @property
    def nbytes(self) -> int:
        return self.ntotal * (self.dim // 8 + 8)
