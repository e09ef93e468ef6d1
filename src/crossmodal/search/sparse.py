"""Learned sparse retrieval (LexLIP-style): photos and texts as non-negative weights over words of the text
tower's WordPiece vocabulary, searched through an inverted index.

Two heads, one per modality, map a model's dense vectors (what a collection already stores) to
``log(1 + relu(x W + b))`` over a vocabulary of WordPiece tokens; each vector keeps its ``top`` largest
weights. A query's score for an item is the dot product of their sparse vectors, computed from the
postings of the query's terms only, so its cost grows with the postings it touches, not the collection.
Heads are trained per model (training/train_sparse.py); lite ships its own (``weights/lite-sparse.npz``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Union

import numpy as np

if TYPE_CHECKING:
    from scipy import sparse

    from ..collection.store import ItemStore
    from ..evaluation.runner import Embedded
    from .pipeline import Query
    from .sparse_words import WordSparse

SIDES = ("image", "text")
SHIPPED = Path(__file__).resolve().parent.parent / "encoders" / "weights" / "lite-sparse.npz"
SPARSE_FILE = "sparse.npz"  # a collection's own heads, for a model that ships none
# What a sparse index holds rows of: heads on the dense vectors (the sparse retriever), or a reranker's word
# classifier (the hybrid retriever's sparse evidence, search/sparse_words.py).
SparseModel = Union["SparseHeads", "WordSparse"]


@dataclass
class SparseHeads:
    """The trained heads of one dense model (``fingerprint``): ``weight[side]`` (dim, V), ``bias[side]`` (V,),
    over the WordPiece ids ``vocab`` (V,) whose strings are ``tokens``; ``top[side]`` weights kept per vector."""

    fingerprint: str
    vocab: np.ndarray
    tokens: list[str]
    weight: dict[str, np.ndarray]
    bias: dict[str, np.ndarray]
    top: dict[str, int]

    @property
    def id(self) -> str:
        """Names these heads (and their pruning), so an index built with other heads is rebuilt."""
        digest = hashlib.blake2b(digest_size=8)
        for side in SIDES:
            digest.update(self.weight[side].tobytes())
            digest.update(str(self.top[side]).encode())
        return digest.hexdigest()

    def encode(self, vectors: np.ndarray, side: str) -> sparse.csr_matrix:
        """Sparse vectors (n, V) of dense ``vectors`` (n, dim) of ``side``'s modality, ``top[side]`` terms each."""
        from scipy import sparse

        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        out = []
        for start in range(0, len(vectors), 4096):
            dense = np.log1p(np.maximum(vectors[start:start + 4096] @ self.weight[side] + self.bias[side], 0.0))
            out.append(keep_top(dense, self.top[side]))
        return sparse.vstack(out, format="csr") if out else sparse.csr_matrix((0, len(self.vocab)), dtype=np.float32)

    def item_rows(self, kind: str, store: ItemStore, ids: np.ndarray, vectors: np.ndarray) -> sparse.csr_matrix:
        """Stored items' rows, from their dense vectors (a collection's sparse index)."""
        return self.encode(vectors, kind)

    def query_row(self, query: Query) -> sparse.csr_matrix | None:
        """A text or photo query's row, from its dense vector; a mixed query has none."""
        return self.encode(query.vector, query.modality) if query.modality in SIDES else None

    def dataset_rows(self, emb: Embedded) -> dict[str, sparse.csr_matrix]:
        """Rows of a dataset held in memory (eval), from its dense vectors: ``caption`` of the captions as stored
        (what photo queries rank), ``text`` of the captions as queries."""
        texts = self.encode(emb.texts, "text")
        return {"image": self.encode(emb.images, "image"), "text": texts,
                "caption": texts if emb.caption_vectors is emb.texts else self.encode(emb.caption_vectors, "text")}

    def terms(self, row: sparse.csr_matrix, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` heaviest words of one sparse vector (what it "says")."""
        order = np.argsort(-row.data)[:n]
        return [(self.tokens[row.indices[i]], float(row.data[i])) for i in order]

    def save(self, path: Path | BinaryIO) -> None:
        arrays = {f"{kind}_{side}": (self.weight if kind == "weight" else self.bias)[side].astype(np.float16)
                  for kind in ("weight", "bias") for side in SIDES}
        np.savez(path, fingerprint=self.fingerprint, vocab=self.vocab.astype(np.int32),
                 tokens=np.array(self.tokens), top=np.array([self.top[s] for s in SIDES]), **arrays)

    @classmethod
    def load(cls, path: Path) -> SparseHeads:
        with np.load(path) as f:
            return cls(str(f["fingerprint"]), f["vocab"].astype(np.int64), [str(t) for t in f["tokens"]],
                       {s: f[f"weight_{s}"].astype(np.float32) for s in SIDES},
                       {s: f[f"bias_{s}"].astype(np.float32) for s in SIDES},
                       {s: int(n) for s, n in zip(SIDES, f["top"], strict=True)})


def find_sparse(fingerprint: str, *paths: Path) -> SparseHeads | None:
    """The sparse heads for the model with ``fingerprint``: from ``paths`` (e.g. a collection's own), else
    the shipped ones when they were trained on this model."""
    for path in (*paths, SHIPPED):
        if Path(path).is_file():
            heads = SparseHeads.load(Path(path))
            if heads.fingerprint == fingerprint:
                return heads
    return None


def keep_top(dense: np.ndarray, top: int) -> sparse.csr_matrix:
    """The ``top`` largest positive entries of each row, as a CSR matrix."""
    from scipy import sparse

    if dense.shape[1] > top:
        cut = np.argpartition(-dense, top - 1, axis=1)[:, top - 1:top]
        threshold = np.take_along_axis(dense, cut, axis=1)
        dense = np.where(dense >= threshold, dense, 0.0)
    return sparse.csr_matrix(dense.astype(np.float32))


@dataclass
class Row:
    """One query's sparse vector without SciPy: its term positions and their weights (what ``SparseIndex`` reads
    of a query, like one row of a CSR matrix)."""

    indices: np.ndarray
    data: np.ndarray

    @property
    def indptr(self) -> np.ndarray:
        return np.array([0, len(self.indices)], dtype=np.int64)


class SparseIndex:
    """Items' sparse vectors as an inverted index: per term, the items that carry it and their weights (float16
    on disk); ``ids`` the item id of each row. Searching is plain NumPy (a cold text search loads no SciPy);
    ``rows`` gives the items' CSR matrix, for updates."""

    def __init__(self, ids: np.ndarray, rows: Any) -> None:
        """``rows``: the items' (N, V) CSR matrix, or its ``(data, indices, indptr, V)``."""
        parts = rows if isinstance(rows, tuple) else (rows.data, rows.indices, rows.indptr, rows.shape[1])
        self.ids = np.asarray(ids, dtype=np.int64)
        self.data, self.indices = np.asarray(parts[0], np.float32), np.asarray(parts[1], np.int64)
        self.indptr, self.width = np.asarray(parts[2], np.int64), int(parts[3])
        owner = np.repeat(np.arange(len(self.ids), dtype=np.int64), np.diff(self.indptr))
        order = np.argsort(self.indices, kind="stable")
        self._items, self._weights = owner[order], self.data[order]  # postings: term by term
        self._starts = np.searchsorted(self.indices[order], np.arange(self.width + 1))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def rows(self) -> sparse.csr_matrix:
        from scipy import sparse

        return sparse.csr_matrix((self.data, self.indices, self.indptr), shape=(len(self.ids), self.width))

    def nbytes(self) -> int:
        """Bytes of the postings as stored: a 4-byte item index and a 2-byte weight per entry, plus offsets."""
        return len(self._items) * 6 + self._starts.nbytes

    def scores(self, query: Any) -> np.ndarray:
        """The score (N,) of every item for one query row (``Row`` or a one-row CSR matrix): the dot product,
        summed from the postings of the query's terms only."""
        spans = [(self._starts[t], self._starts[t + 1], w) for t, w in zip(query.indices, query.data, strict=True)
                 if t < self.width]
        if not spans:
            return np.zeros(len(self.ids), dtype=np.float32)
        items = np.concatenate([self._items[a:b] for a, b, _ in spans])
        weights = np.concatenate([self._weights[a:b] * np.float32(w) for a, b, w in spans])
        return np.bincount(items, weights=weights, minlength=len(self.ids)).astype(np.float32)

    def search(self, queries: Any, k: int, allowed: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(scores, ids) of the ``k`` best items for each query row (a ``Row`` or CSR rows; only ``allowed`` ids,
        if given), best first; items sharing no term with a query are not returned."""
        keep = None if allowed is None else np.isin(self.ids, allowed)
        out = []
        for r in range(len(queries.indptr) - 1):
            a, b = queries.indptr[r], queries.indptr[r + 1]
            out.append(self.top(self.scores(Row(np.asarray(queries.indices[a:b]), np.asarray(queries.data[a:b]))),
                                k, keep))
        return out

    def top(self, scores: np.ndarray, k: int, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``k`` best items by ``scores`` (every item's, from ``scores()``) that score above 0
        (and that ``keep`` marks, if given), best first, equal scores by id."""
        cols = np.flatnonzero(scores > 0 if keep is None else (scores > 0) & keep)
        values = scores[cols]
        if len(cols) > k:
            part = np.argpartition(-values, k - 1)[:k]
            cols, values = cols[part], values[part]
        order = np.lexsort((self.ids[cols], -values))
        return values[order], self.ids[cols[order]]
