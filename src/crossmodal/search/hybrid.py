"""Retrievers besides dense in the ranking pipeline: ``keyword`` (BM25 over the items' words alone),
``sparse`` (learned sparse vectors through an inverted index, search/sparse.py) and ``hybrid`` (the dense
score plus a share of the BM25 score and, when the model's reranker has a word classifier, of the caption-word
score, search/sparse_words.py; over the union of the candidate lists).

Hybrid scores stay on the dense scale, so the rerank, cut and diversify stages work on them unchanged:
``fused = dense + weight x bm25 / best bm25 + sparse weight x words / best words of the query``; an item found
by its words alone gets its exact dense score from the stored vectors. A query without words (a weighted mix)
has no keyword evidence; a photo query has no BM25 but has its predicted words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ..collection import keywords

if TYPE_CHECKING:
    from ..collection.collection import Collection
    from .pipeline import Query, TowerBiases
    from .sparse import SparseIndex

RETRIEVERS = ("dense", "keyword", "sparse", "hybrid")
WEIGHT = 0.1  # the share of the normalised BM25 score in a hybrid score
# BM25 scores are divided by the query's best one, but never by less than this: a word that nearly every item
# holds (a folder name all share) scores about 1e-6 everywhere and must not become a full share. On Flickr8k
# dev captions the best BM25 of a caption query is 5-56, so it never binds there.
MIN_BEST = 1.0
POOL = 100  # candidates of each list hybrid fuses at least: an item outside both would need a word score that
# makes up for a dense score under the 100th best, so the fused top is the one over every item (as eval ranks)
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009), compared with WEIGHT in benchmarks
SPARSE_WEIGHT = 0.1  # the share of the normalised caption-word score in a hybrid score (chosen on dev)

Ranked = tuple[np.ndarray, np.ndarray]  # (scores, ids), best first


def check_retriever(name: str) -> None:
    if name not in RETRIEVERS:
        raise ValueError(f"unknown retriever {name!r}; choose one of {', '.join(RETRIEVERS)}")


def words_of(query: Query) -> str | None:
    """The words keyword retrieval reads: those of a one-text query, else none."""
    return query.source if query.modality == "text" and isinstance(query.source, str) else None


def with_words(query_modality: str, kind: str, reranked: bool) -> bool:
    """Whether a hybrid score adds the caption words for a query of this modality ranking items of ``kind``:
    across modalities only (what the share was chosen for), and for a photo query only when it is not reranked:
    the rerank stage adds them then, among its top N (counted once: on Flickr8k dev, 362.3 RSUM against 360.5
    counted twice and 361.6 in the rerank stage alone)."""
    return query_modality != kind and not (query_modality == "image" and reranked)


def dense_scale(retriever: str) -> bool:
    """Whether this retriever scores on the dense scale (dense, or dense plus shares of other evidence): its
    list starts from the dense one, and the reranker may re-score it."""
    return retriever in ("dense", "hybrid")


def weighted(dense: np.ndarray, bm25: np.ndarray, weight: float = WEIGHT, sparse: np.ndarray | None = None,
             sparse_weight: float | None = None, sparse_best: float | None = None) -> np.ndarray:
    """Fused scores of candidates with these dense, BM25 (0: no keyword match) and sparse scores (the sparse
    share ``SPARSE_WEIGHT`` unless given, of the sparse score over ``sparse_best``, by default the candidates'
    best, which holds the collection's best: hybrid fuses the sparse list's top)."""
    best = max(float(bm25.max(initial=0.0)), MIN_BEST)
    fused = dense + np.float32(weight / best) * bm25
    sparse_weight = SPARSE_WEIGHT if sparse_weight is None else sparse_weight
    if sparse is not None and sparse_weight:
        top = float(sparse.max(initial=0.0)) if sparse_best is None else sparse_best
        fused = fused + np.float32(sparse_weight / max(top, 1e-6)) * sparse
    return fused.astype(np.float32)


def set_scores(retriever: str, dense: np.ndarray, bm25: np.ndarray | None, sparse: np.ndarray | None) -> np.ndarray:
    """Score matrices (queries, items) of a set held in memory (eval), as each retriever ranks them."""
    zeros = np.zeros_like(dense)
    if retriever == "keyword":
        return zeros if bm25 is None else bm25
    if retriever == "sparse":
        return zeros if sparse is None else sparse
    return np.stack([weighted(d, zeros[0] if bm25 is None else b, sparse=None if sparse is None else s)
                     for d, b, s in zip(dense, zeros if bm25 is None else bm25, zeros if sparse is None else sparse,
                                        strict=True)])


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


def fuse(dense: Ranked, found: Ranked, dense_of: np.ndarray, weight: float = WEIGHT,
         sparse_of: Callable[[np.ndarray], np.ndarray] | None = None, sparse_best: float | None = None) -> Ranked:
    """One query's hybrid list: the union of its dense and keyword lists (``found``: BM25 scores, 0 for other
    candidates) by fused score, best first (equal scores: the dense list's order first); ``sparse_of(ids)``
    gives the candidates' caption-word scores, when the model has them (scaled by ``sparse_best``, see
    ``weighted``)."""
    ids, dense_scores, bm25 = union(dense, found, dense_of)
    fused = weighted(dense_scores, bm25, weight, None if sparse_of is None else sparse_of(ids),
                     sparse_best=sparse_best)
    order = np.lexsort((np.arange(len(ids)), -fused))
    return fused[order], ids[order]


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each of ``wanted`` (all present) is in ``ids``."""
    order = np.argsort(ids, kind="stable")
    return order[np.searchsorted(ids[order], wanted)]


def stage(collection: Collection, queries: Sequence[Query], dense: list[Ranked], *, kind: str,
          allowed: np.ndarray | None, fetch: int, retriever: str, shares: np.ndarray, reranked: bool,
          tower: TowerBiases | None = None) -> list[Ranked]:
    """The keyword, sparse or hybrid retriever's candidates for each query, from the dense ones: keyword and
    sparse replace them by their own lists, hybrid fuses dense, BM25 and the caption words (``with_words``;
    ``reranked``: the rerank stage will re-score the top; ``tower``: the biases of the queries the multilingual
    tower encoded). It holds the collection's lock to read the store (the keyword matches, one snapshot), not to
    fuse: a server's threads fuse at once."""
    if retriever == "sparse":
        with collection.lock:
            return sparse_stage(collection, queries, kind=kind, allowed=allowed, fetch=fetch)
    with collection.lock:
        store = collection.store
        matches = [keywords.search(store.db, words, kind, fetch, allowed, store.generation)
                   if (words := words_of(query)) else (np.zeros(0, np.float32), np.zeros(0, np.int64))
                   for query in queries]
        snapshot = Snapshot.of(collection, kind, words=retriever == "hybrid")
    out = []
    for i, (query, share, ranked, found) in enumerate(zip(queries, shares, dense, matches, strict=True)):
        keep = ~np.isin(found[1], np.asarray(query.exclude, dtype=np.int64)) & snapshot.holds(found[1])
        found = (found[0][keep], found[1][keep])
        if retriever == "keyword":
            out.append(found)
            continue
        sparse_of = None
        every = _word_scores(collection, snapshot.words, query, kind, reranked)
        if every is not None:
            index = snapshot.words
            more = index.top(every, fetch, None if allowed is None else np.isin(index.ids, allowed))[1]
            more = more[~np.isin(more, found[1]) & ~np.isin(more, np.asarray(query.exclude, dtype=np.int64))
                        & snapshot.holds(more)]
            found = (np.concatenate([found[0], np.zeros(len(more), np.float32)]), np.concatenate([found[1], more]))
            sparse_of = partial(_by_id, index.ids, every)
        biases = tower.biases if tower is not None and tower.took[i] else None
        out.append(fuse(ranked, found, snapshot.dense_scores(found[1], query.vector, float(share), biases),
                        sparse_of=sparse_of, sparse_best=query.words_best))
    return out


@dataclass(frozen=True)
class Snapshot:
    """What the hybrid stage reads of one store generation: the stored ids (ascending), their rows in
    ``store.matrix`` order, their normalisation biases (None: none current) and the caption-word index."""

    ids: np.ndarray
    matrix: Any
    biases: np.ndarray | None
    words: SparseIndex | None

    @classmethod
    def of(cls, collection: Collection, kind: str, words: bool = True) -> Snapshot:
        """The collection's items of ``kind`` now, with the caption-word index when ``words`` (the keyword
        retriever reads none: it is not built for it); call holding the collection's lock."""
        return cls(*collection.store.matrix(kind), collection.store.biases(kind),
                   collection.words.get(kind) if words else None)

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` are in the snapshot (all of them, unless the store changed under a reader)."""
        rows = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        return (self.ids[rows] == ids) if len(self.ids) else np.zeros(len(ids), dtype=bool)

    def dense_scores(self, ids: np.ndarray, vector: np.ndarray, share: float,
                     biases: np.ndarray | None = None) -> np.ndarray:
        """The dense scores of stored items by id, normalised when ``share`` (by ``biases`` in snapshot order,
        else the stored ones)."""
        rows = np.searchsorted(self.ids, ids)
        scores = np.asarray(self.matrix[rows], dtype=np.float32) @ np.asarray(vector, dtype=np.float32)
        if share:
            scores -= np.float32(share) * (self.biases if biases is None else biases)[rows]
        return scores.astype(np.float32)


def _word_scores(collection: Collection, index: SparseIndex | None, query: Query, kind: str, reranked: bool
                 ) -> np.ndarray | None:
    """Every stored item's caption-word score for ``query`` (in the word ``index``'s id order), or None when the
    hybrid adds no words to it (no classifier, a mixed query, ``with_words``)."""
    heads = collection.words.heads
    if heads is None or index is None or not SPARSE_WEIGHT or not with_words(query.modality, kind, reranked):
        return None
    row = heads.query_row(query)
    return None if row is None else index.scores(row)


def _by_id(ids: np.ndarray, scores: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The scores of stored items by id (``ids`` sorted, all of ``wanted`` among them)."""
    return scores[np.searchsorted(ids, wanted)]


def words_best(collection: Collection, queries: Sequence[Query], *, kind: str, allowed: np.ndarray | None,
               reranked: bool) -> list[float]:
    """Each query's best caption-word score among the items of ``kind`` it may find (0 when it has none): what
    a sharded collection gathers from its shards, so that they scale the evidence alike (call holding the
    collection's lock)."""
    out = []
    index = collection.words.get(kind)
    for query in queries:
        every = _word_scores(collection, index, query, kind, reranked)
        if every is None:
            out.append(0.0)
            continue
        ids = index.ids
        mayfind = ~np.isin(ids, np.asarray(query.exclude, dtype=np.int64))
        if allowed is not None:
            mayfind &= np.isin(ids, allowed)
        out.append(float(every[mayfind].max(initial=0.0)))
    return out


def sparse_stage(collection: Collection, queries: Sequence[Query], *, kind: str, allowed: np.ndarray | None,
                 fetch: int) -> list[Ranked]:
    """Each query's candidates by its sparse row (the model's sparse heads) through the inverted index; a query
    without one (a mixed query) finds nothing."""
    heads = collection.sparse.heads
    if heads is None:
        raise ValueError(f"the model {collection.manifest.model!r} has no sparse heads, so --retriever sparse "
                         "cannot be used with it (train some with `crossmodal train --sparse`)")
    out = []
    for query in queries:
        row = heads.query_row(query)
        if row is None:
            out.append((np.zeros(0, np.float32), np.zeros(0, np.int64)))
            continue
        scores, ids = collection.sparse.get(kind).search(row, fetch, allowed)[0]
        keep = ~np.isin(ids, np.asarray(query.exclude, dtype=np.int64))
        out.append((scores[keep], ids[keep]))
    return out
