"""Keyword evidence in the ranking pipeline: the ``keyword`` retriever (BM25 over the items' words alone)
and the ``hybrid`` one (the dense score plus a share of the BM25 score, over the union of both candidate
lists).

Hybrid scores stay on the dense scale, so the rerank, cut and diversify stages work on them unchanged:
``fused = dense + weight x bm25 / best bm25 of the query``; an item found by its words alone gets its
exact dense score from the stored vectors. A query without words (a photo, a weighted mix) has no
keyword evidence: hybrid then ranks as dense, keyword finds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..collection import keywords

if TYPE_CHECKING:
    from ..collection.collection import Collection
    from .pipeline import Query

RETRIEVERS = ("dense", "keyword", "hybrid")
WEIGHT = 0.1  # the share of the normalised BM25 score in a hybrid score
# BM25 scores are divided by the query's best one, but never by less than this: a word that nearly every item
# holds (a folder name all share) scores about 1e-6 everywhere and must not become a full share. On Flickr8k
# dev captions the best BM25 of a caption query is 5-56, so it never binds there.
MIN_BEST = 1.0
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009), compared with WEIGHT in benchmarks

Ranked = tuple[np.ndarray, np.ndarray]  # (scores, ids), best first


def check_retriever(name: str) -> None:
    if name not in RETRIEVERS:
        raise ValueError(f"unknown retriever {name!r}; choose one of {', '.join(RETRIEVERS)}")


def words_of(query: Query) -> str | None:
    """The words keyword retrieval reads: those of a one-text query, else none."""
    return query.source if query.modality == "text" and isinstance(query.source, str) else None


def weighted(dense: np.ndarray, bm25: np.ndarray, weight: float = WEIGHT) -> np.ndarray:
    """Fused scores of candidates with these dense and BM25 scores (0: no keyword match)."""
    best = max(float(bm25.max(initial=0.0)), MIN_BEST)
    return (dense + np.float32(weight / best) * bm25).astype(np.float32)


def reciprocal_rank(dense: np.ndarray, bm25: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion of the same candidates: sum of 1 / (k + rank) over the lists that hold them
    (an item without a keyword match is not in the keyword list)."""
    fused = 1.0 / (k + 1 + _ranks(dense))
    matched = bm25 > 0
    fused[matched] += 1.0 / (k + 1 + _ranks(np.where(matched, bm25, -np.inf))[matched])
    return fused.astype(np.float32)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of each score (higher first; ties by position)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(len(scores))
    return ranks


def union(dense: Ranked, found: Ranked, dense_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates of a dense list and a keyword list ``found`` (whose dense scores are ``dense_of``):
    (ids, dense scores, BM25 scores, 0 where not found by words), the dense list's first."""
    extra = ~np.isin(found[1], dense[1])
    ids = np.concatenate([dense[1], found[1][extra]])
    bm25 = np.zeros(len(ids), dtype=np.float32)
    bm25[_positions(ids, found[1])] = found[0]
    return ids, np.concatenate([dense[0], dense_of[extra]]).astype(np.float32), bm25


def fuse(dense: Ranked, found: Ranked, dense_of: np.ndarray, weight: float = WEIGHT) -> Ranked:
    """One query's hybrid list: the union of its dense and keyword lists by fused score, best first (equal
    scores: the dense list's order first)."""
    ids, dense_scores, bm25 = union(dense, found, dense_of)
    fused = weighted(dense_scores, bm25, weight)
    order = np.lexsort((np.arange(len(ids)), -fused))
    return fused[order], ids[order]


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each of ``wanted`` (all present) is in ``ids``."""
    order = np.argsort(ids, kind="stable")
    return order[np.searchsorted(ids[order], wanted)]


def stage(collection: Collection, queries: Sequence[Query], dense: list[Ranked], *, kind: str,
          allowed: np.ndarray | None, fetch: int, retriever: str, shares: np.ndarray) -> list[Ranked]:
    """The keyword or hybrid retriever's candidates for each query, from the dense ones (call holding the
    collection's lock): keyword replaces them by the BM25 list, hybrid fuses the two."""
    out = []
    for query, share, ranked in zip(queries, shares, dense, strict=True):
        words = words_of(query)
        found = (keywords.search(collection.store.db, words, kind, fetch, allowed) if words
                 else (np.zeros(0, np.float32), np.zeros(0, np.int64)))
        keep = ~np.isin(found[1], np.asarray(query.exclude, dtype=np.int64)) & _stored(collection, kind, found[1])
        found = (found[0][keep], found[1][keep])
        if retriever == "keyword":
            out.append(found)
        else:
            out.append(fuse(ranked, found, dense_scores(collection, kind, found[1], query.vector, float(share))))
    return out


def _stored(collection: Collection, kind: str, ids: np.ndarray) -> np.ndarray:
    """Which ids are in the search snapshot (all of them, unless the store changed under a reader)."""
    stored = collection.store.matrix(kind)[0]
    rows = np.minimum(np.searchsorted(stored, ids), max(len(stored) - 1, 0))
    return (stored[rows] == ids) if len(stored) else np.zeros(len(ids), dtype=bool)


def dense_scores(collection: Collection, kind: str, ids: np.ndarray, vector: np.ndarray, share: float
                 ) -> np.ndarray:
    """The (normalised, when ``share``) dense scores of stored items by id, from the search snapshot."""
    stored, matrix = collection.store.matrix(kind)
    rows = np.searchsorted(stored, ids)
    scores = np.asarray(matrix[rows], dtype=np.float32) @ np.asarray(vector, dtype=np.float32)
    if share:
        scores -= np.float32(share) * collection.store.biases(kind)[rows]
    return scores.astype(np.float32)
