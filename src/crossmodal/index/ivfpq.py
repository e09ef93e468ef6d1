"""IVF-PQ (FAISS): vectors compressed to ``m`` bytes in ``nlist`` inverted lists; the top candidates are
rescored exactly from the stored full vectors, so scores are exact and recall recovers."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .base import VectorIndex, VectorLookup, as_vectors, exact_rescore, selector


class IVFPQIndex(VectorIndex):
    """``nlist`` coarse cells, ``nprobe`` cells visited per query, ``m`` PQ bytes per vector,
    ``rescore`` candidates per result re-ranked with the stored vectors."""

    kind = "ivfpq"
    rescores = True

    def __init__(self, dim: int, nlist: int = 4096, m: int = 64, nprobe: int = 32, rescore: int = 10,
                 index: Any = None) -> None:
        if index is None:
            self._quantizer = faiss.IndexFlatIP(dim)  # the IVF index borrows it: keep it alive
            index = faiss.IndexIVFPQ(self._quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            index.do_polysemous_training = False  # only useful for Hamming pre-filtering, and very slow
        super().__init__(dim, index, nlist=nlist, m=m, nprobe=nprobe, rescore=rescore)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               lookup: VectorLookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        fetch = k * self.params["rescore"] if lookup is not None else k
        params = faiss.SearchParametersIVF(nprobe=self.params["nprobe"])
        sel = selector(allowed)
        if sel is not None:
            params.sel = sel
        scores, ids = self.index.search(as_vectors(queries), fetch, params=params)
        return exact_rescore(queries, ids, k, lookup) if lookup is not None else (scores, ids)

    @property
    def nbytes(self) -> int:
        return self.ntotal * (self.index.code_size + 8) + self.params["nlist"] * self.dim * 4 \
            + self.params["m"] * 256 * (self.dim // self.params["m"]) * 4
