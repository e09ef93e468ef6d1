"""The one ranking pipeline: retrieve candidates -> normalise -> rerank the top N -> collapse -> cut.

``Collection.search``, ``crossmodal search``, ``crossmodal eval`` and ``crossmodal serve`` all rank
through these functions with the same ``Ranking`` options, so the number eval prints is the number
users get. Stages (after the query is encoded: ``Ranking.both_towers`` says how a text query is):

- retrieve: exact (a matrix product on the snapshot) or through the collection's ANN index, with
  filters applied before ranking; the ``keyword`` and ``sparse`` retrievers take BM25's list or the learned
  sparse index's instead, ``hybrid`` fuses dense and BM25 (search/hybrid.py);
- normalise: the score less ``share`` x the item's stored bias (search/normalise.py), for queries of
  the other modality than the items (a caption ranking photos, a photo ranking captions); folded into
  retrieval so every index kind ranks by the normalised score;
- rerank: a model that reads the query and each of the top N candidates together re-scores them as
  ``score + weight x logit`` (BLIP's ITM + ITC); only the order inside the top N changes;
- collapse: the moments of one video (collection/moments.py) stand for it together: its best-ranked moment
  stays, the others go, and candidates are fetched further until the page is full again;
- cut: results scoring under ``min_score`` are dropped;
- diversify (optional): maximal marginal relevance picks the page from a pool of ``diversity.POOL``
  candidates by their stored vectors (search/diversity.py), so near-copies do not fill it; scores stay
  the pipeline's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..collection.tower_biases import SEARCH_COMPUTES
from ..collection.vector_file import GatheredRows
from ..defaults import DEFAULT_RERANK, DEFAULT_RETRIEVER
from . import hybrid
from .diversity import POOL, check_lambda, mmr
from .exact import scores as inner_products
from .exact import topk
from .hybrid import Ranked
from .normalise import Bank, augment_queries, index_dim

MAX_FETCH = 65536  # candidates fetched at most to fill a page that videos' moments collapsed

if TYPE_CHECKING:
    from ..collection.collection import Collection


@dataclass(frozen=True)
class Ranking:
    """How results are ranked, with the same defaults everywhere: normalisation on, rerank the top
    ``rerank`` (0: off), drop results under ``min_score`` (None: keep all), diversify with MMR at lambda
    ``diversity`` (None or 1: off; lower is more diverse); candidates from the ``retriever`` (dense,
    keyword, sparse or hybrid: search/hybrid.py). ``both_towers`` encodes a text query the model's own text
    tower reads through its multilingual tower as well, blended as its stored captions are
    (``Encoder.blend_captions``): better answers for about twice the query's encoding time, so off by default."""

    norm: bool = True
    rerank: int = DEFAULT_RERANK
    min_score: float | None = None
    diversity: float | None = None
    retriever: str = DEFAULT_RETRIEVER
    both_towers: bool = False

    def __post_init__(self) -> None:
        if self.rerank < 0:
            raise ValueError(f"rerank must be 0 (off) or a number of results to re-score, not {self.rerank}")
        if self.diversity is not None:
            check_lambda(self.diversity)
        hybrid.check_retriever(self.retriever)

    @property
    def diverse(self) -> bool:
        """Whether the diversify stage runs (a lambda under 1)."""
        return self.diversity is not None and self.diversity < 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "rerank": self.rerank, "min_score": self.min_score, "diversity": self.diversity,
                "retriever": self.retriever, "both_towers": self.both_towers}


@dataclass
class Query:
    """One encoded query. ``modality`` is ``text``, ``image`` or ``mixed`` (a weighted combination);
    ``source`` is the one text or photo it came from, which the reranker reads."""

    vector: np.ndarray
    modality: str = "mixed"
    source: Any = None
    exclude: Sequence[int] = ()
    states: tuple[np.ndarray, np.ndarray] | None = None  # a text source's token states and mask, if at hand
    # a photo source's spatial features (1, C, H, W) for the reranker, if at hand
    grid: np.ndarray | None = field(default=None, compare=False, repr=False)
    tower: bool = False  # its texts went through the multilingual tower: normalised against that tower's bank
    # the best caption-word score over a whole sharded collection, gathered from its shards, so that each shard
    # scales the hybrid's word evidence as one collection would (search/hybrid.py); None: the candidates' best
    words_best: float | None = None
    # what stages computed from the source, for the next stage to reuse (a photo's reranker inputs)
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class Timings:
    """Seconds spent per stage, summed over queries (eval divides by the query count)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    queries: int = 0

    def add(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - started
        return now

    def per_query_ms(self) -> dict[str, float]:
        return {k: 1000 * v / max(self.queries, 1) for k, v in self.seconds.items()}


# logits(query, candidate ids) -> (n,) reranker logits, or None when these candidates cannot be reranked.
Scorer = Callable[[Query, np.ndarray], np.ndarray | None]


def cross_modal(query_modality: str, kind: str) -> bool:
    """A text ranking photos or a photo ranking texts: the queries normalisation and reranking apply to."""
    return query_modality == {"image": "text", "text": "image"}[kind]


def rerank_top(scores: np.ndarray, ids: np.ndarray, n: int, logits: np.ndarray, weight: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Re-order the first ``n`` of one ranked list by ``score + weight * logit``; the rest stays put.

    ``logits`` holds the reranker's logits of ``ids[:n]``. Returns (scores, ids) with the fused
    scores for the re-ranked part, best first (equal fused scores keep their retrieval order); a result
    after the first ``n`` scores at most the last fused score, so scores never rise down the list.
    """
    n = min(n, len(ids))
    fused = scores[:n] + np.float32(weight) * np.asarray(logits, dtype=np.float32)
    order = np.argsort(-fused, kind="stable")
    rest = np.minimum(scores[n:], fused[order][-1]) if n else scores[n:]
    return (np.concatenate([fused[order], rest]).astype(np.float32),
            np.concatenate([ids[:n][order], ids[n:]]))


def cut(scores: np.ndarray, ids: np.ndarray, min_score: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Drop the results of one list that score under ``min_score``."""
    if min_score is None:
        return scores, ids
    keep = scores >= min_score
    return scores[keep], ids[keep]


class Source(Protocol):
    """What the pipeline ranks: one collection, or shards that answer as one (collection/sharded.py)."""

    def candidates(self, queries: Sequence[Query], *, fetch: int, kind: str, allowed: Any, ranking: Ranking,
                   timings: Timings) -> list[Ranked]:
        """The retriever's ``fetch`` best (scores, ids) per query, normalised, filtered, exclusions left out."""
        ...

    def reranker(self, kind: str) -> tuple[Scorer, float] | None:
        """The reranker for items of ``kind`` (scorer, fusion weight), if any."""
        ...

    def vectors(self, kind: str, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of items (diversify)."""
        ...

    def groups(self, kind: str, ids: np.ndarray) -> dict[int, Any]:
        """The group of each of ``ids`` that stands for one result with others (a video's moments: the collapse
        stage keeps each group's best); items in no group are left out."""
        ...


def run(source: Source, queries: Sequence[Query], *, k: int, kind: str, allowed: Any, ranking: Ranking,
        timings: Timings | None = None) -> list[Ranked]:
    """Rank items of ``kind`` for each query: (scores, ids) per query, best first, at most ``k``.

    ``allowed`` (for a collection, the ids passing the filters, or None for all) restricts candidates before
    ranking, and each query's ``exclude`` ids are left out, so a list is full whenever enough items match.
    """
    timings = timings if timings is not None else Timings()
    timings.queries += len(queries)
    reranking = source.reranker(kind) if ranking.rerank and hybrid.dense_scale(ranking.retriever) else None
    pool = max(k, POOL) if ranking.diverse else k
    fetch = max(pool, ranking.rerank if reranking else 0) + max((len(q.exclude) for q in queries), default=0)
    groups = source.groups if kind == "image" else None
    while True:
        out = source.candidates(queries, fetch=fetch, kind=kind, allowed=allowed, ranking=ranking, timings=timings)
        started = time.perf_counter()
        if reranking is not None:
            out = [rerank(reranking, query, kind, ranking.rerank, ranked) for query, ranked in zip(queries, out,
                                                                                                  strict=True)]
            started = timings.add("rerank", started)
        found = {} if groups is None else groups(kind, np.concatenate([ids for _, ids in out]))
        if not found:  # no moment among the candidates (a photo-only collection): nothing to collapse
            break
        full = [len(ids) >= fetch for _, ids in out]
        out = collapse(out, found)
        started = timings.add("collapse", started)
        if fetch >= MAX_FETCH or not any(f and len(ids) < pool for f, (_, ids) in zip(full, out, strict=True)):
            break
        fetch *= 4  # moments of a few videos filled the candidates: look further for a full page
    out = [cut(s[:pool], i[:pool], ranking.min_score) for s, i in out]
    started = timings.add("cut", started)
    if ranking.diverse:
        out = [diversify(source.vectors(kind, i), s, i, ranking.diversity, k) for s, i in out]
        timings.add("diversify", started)
    return out


def rerank(reranking: tuple[Scorer, float], query: Query, kind: str, n: int, ranked: Ranked) -> Ranked:
    """One query's list with its top ``n`` re-scored by the reranker, when it applies to this query."""
    scorer, weight = reranking
    if query.source is None or not cross_modal(query.modality, kind) or not len(ranked[1]):
        return ranked
    logits = scorer(query, ranked[1][:n])
    return ranked if logits is None else rerank_top(*ranked, n, logits, weight)


def collapse(out: list[Ranked], groups: dict[int, Any]) -> list[Ranked]:
    """Keep only the best-ranked item of each group (a video's moments: its best moment stands for it); items
    in no group (photos) all stay, in order."""
    collapsed = []
    for scores, ids in out:
        seen: set[Any] = set()
        keep = []
        for i, item in enumerate(ids):
            group = groups.get(int(item))
            if group is None or group not in seen:
                keep.append(i)
                seen.add(group)
        collapsed.append((scores[keep], ids[keep]))
    return collapsed


def candidates(collection: Collection, queries: Sequence[Query], *, fetch: int, kind: str,
               allowed: np.ndarray | None, ranking: Ranking, timings: Timings) -> list[Ranked]:
    """One collection's candidates (``Source.candidates``): dense retrieval by the normalised score, each
    query's exclusions left out, then the keyword, sparse or hybrid retriever's stage (hybrid fuses the best
    ``hybrid.POOL`` of each list at least, so that what it ranks first is what fusing every item would)."""
    started = time.perf_counter()
    fetch = max(fetch, hybrid.POOL) if ranking.retriever == "hybrid" else fetch
    vectors = np.stack([q.vector for q in queries]).astype(np.float32)
    with collection.lock:
        bank = collection.store.bank
        normalised = ranking.norm and collection.store.biases_current(kind)
        shares = np.array([bank.share if normalised and cross_modal(q.modality, kind) else 0.0
                           for q in queries], dtype=np.float32)
        tower = tower_normalised(collection, queries, kind) if normalised else None
    if tower is not None:
        shares[tower.took] = tower.share
    if hybrid.dense_scale(ranking.retriever):
        scores, found = retrieve(collection, vectors, shares, normalised, fetch, kind, allowed, tower)
    else:  # keyword and sparse lists replace the dense one: do not compute it
        scores, found = np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    started = timings.add("retrieve", started)
    out = []
    for query, row_scores, row_ids in zip(queries, scores, found, strict=True):
        keep = (row_ids >= 0) & ~np.isin(row_ids, np.asarray(query.exclude, dtype=np.int64))
        out.append((row_scores[keep], row_ids[keep]))
    if ranking.retriever != "dense":
        out = hybrid.stage(collection, queries, out, kind=kind, allowed=allowed, fetch=fetch,
                           retriever=ranking.retriever, shares=shares, reranked=ranking.rerank > 0, tower=tower)
        timings.add(ranking.retriever, started)
    return out


def diversify(vectors: np.ndarray, scores: np.ndarray, ids: np.ndarray, lam: float, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` results MMR picks from one ranked list, in its order, given the items' stored vectors."""
    order = mmr(scores, np.asarray(vectors, dtype=np.float32), lam, k)
    return scores[order], ids[order]


@dataclass
class TowerBiases:
    """Which queries the multilingual tower encoded, and the items' biases (``store.matrix`` order) and share
    that normalise them: those against the tower's own bank (collection/tower_biases.py)."""

    took: np.ndarray
    biases: np.ndarray
    share: float


def tower_normalised(collection: Collection, queries: Sequence[Query], kind: str) -> TowerBiases | None:
    """The tower's normalisation for these queries ranking ``kind``, when any of them took the tower and the
    collection has biases against its bank (call holding the collection's lock)."""
    took = np.array([q.tower and q.modality == "text" for q in queries])
    biases = collection.tower_biases.get(kind, most=SEARCH_COMPUTES) if kind == "image" and took.any() else None
    return None if biases is None else TowerBiases(took, biases, collection.tower_biases.bank.share)


def retrieve(collection: Collection, vectors: np.ndarray, shares: np.ndarray, normalised: bool,
             fetch: int, kind: str, allowed: np.ndarray | None, tower: TowerBiases | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (scores, ids; -1 where fewer were found) by the normalised score, exact or through the
    collection's index (which never makes a search wait for its update: see ``CatchingUp``); the queries the
    multilingual tower encoded by their own biases (``tower``). The collection's lock is held for the store's
    reads and the index's search, not for an exact search's matrix product (the snapshot it reads never changes),
    so that the threads of a server search at once."""
    with collection.lock:
        index = collection.indexes.get(kind, lag=True)
        if index is not None:
            return _index_candidates(collection, index, vectors, shares, fetch, kind, allowed, tower)
        ids, matrix = collection.store.matrix(kind)
        biases = collection.store.biases(kind) if normalised else None
    mask = None if allowed is None else np.isin(ids, allowed)
    if tower is None:
        return exact_candidates(ids, matrix, vectors, fetch, mask, biases, shares)
    took = tower.took
    scores = np.full((len(vectors), min(fetch, len(ids))), -np.inf, dtype=np.float32)
    found = np.full(scores.shape, -1, dtype=np.int64)
    for rows, row_biases in ((~took, biases), (took, tower.biases)):  # each query's matrix product once
        if rows.any():
            part_scores, part_found = exact_candidates(ids, matrix, vectors[rows], fetch, mask, row_biases,
                                                       shares[rows])
            scores[rows, :part_scores.shape[1]], found[rows, :part_found.shape[1]] = part_scores, part_found
    return scores, found


def _index_candidates(collection: Collection, index: Any, vectors: np.ndarray, shares: np.ndarray, fetch: int,
                      kind: str, allowed: np.ndarray | None, tower: TowerBiases | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``retrieve`` through the collection's index (call holding the collection's lock)."""
    queries = augment_queries(vectors, shares, index_dim(vectors.shape[1], index.kind))
    lookup = collection.indexes.lookup(kind, index)
    scores, found = index.query(queries, fetch, allowed=allowed, lookup=lookup)
    if tower is None:
        return scores, found
    # The index holds the model's biases: trade them for the tower's on its candidates, fetching deeper until no
    # item left out could rank in the top ``fetch`` by the tower's normalised score.
    stored, english = collection.store.matrix(kind)[0], collection.store.biases(kind)
    gap = english - tower.biases
    widest = gap.max(initial=0.0)
    for row in np.flatnonzero(tower.took):
        depth, row_scores, row_found = fetch, scores[row], found[row]
        while True:
            ok = row_found >= 0
            traded = row_scores[ok] + shares[row] * gap[np.searchsorted(stored, row_found[ok])]
            if ok.sum() < depth or depth >= len(stored) or (
                    np.sort(traded)[-min(fetch, len(traded))] >= row_scores[ok].min() + shares[row] * widest):
                break
            depth = min(4 * depth, len(stored))
            row_scores, row_found = (a[0] for a in index.query(queries[row:row + 1], depth, allowed=allowed,
                                                                lookup=lookup))
        order = np.lexsort((row_found[ok], -traded))[:fetch]
        scores[row], found[row] = -np.inf, -1
        scores[row][:len(order)], found[row][:len(order)] = traded[order], row_found[ok][order]
    return scores, found


def exact_candidates(ids: np.ndarray, matrix: Any, vectors: np.ndarray, fetch: int, mask: np.ndarray | None,
                     biases: np.ndarray | None, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact candidates (scores, ids) over the snapshot ``(ids, matrix)`` of ``store.matrix``."""
    if not isinstance(matrix, GatheredRows):
        scores, rows = topk(matrix, vectors, fetch, mask, biases, shares)
        return scores, ids[rows]
    # the file holds the rows in another order (after re-embeds): scan it as it lies, unused rows masked
    position, matrix = matrix.file_order()
    used = np.maximum(position, 0)
    mask = (position >= 0) & (True if mask is None else mask[used])
    scores, rows = topk(matrix, vectors, fetch, mask, None if biases is None else biases[used], shares)
    found = ids[position[rows]]
    order = np.lexsort((found, -scores), axis=1)  # equal scores by id, as in id order
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(found, order, axis=1)


# logits(query index, item indices) -> reranker logits over a set held in memory (eval), or None: not reranked.
SetScorer = Callable[[int, np.ndarray], np.ndarray | None]
# BM25 (0: no word matched) or sparse scores (queries, items) of a direction's queries against items in memory.
SetEvidence = Callable[[str, np.ndarray, np.ndarray], np.ndarray]


class SetScores:
    """The pipeline over photos and captions held in memory (eval): the same normalisation, rerank and
    diversify stages as ``run``, as score matrices that order each row the way search orders its results."""

    def __init__(self, image_emb: np.ndarray, text_emb: np.ndarray, ranking: Ranking, bank: Bank | None = None,
                 rerankers: dict[str, tuple[SetScorer, float]] | None = None, timings: Timings | None = None,
                 keywords: SetEvidence | None = None, sparse: SetEvidence | None = None,
                 tower: tuple[Bank, np.ndarray] | None = None, caption_emb: np.ndarray | None = None,
                 photo_queries: np.ndarray | None = None) -> None:
        """``tower``: the multilingual tower's bank and which captions it encoded, normalised by it (as search
        normalises them, collection/tower_biases.py). ``caption_emb``: the captions as a collection stores them,
        what photo queries rank (``Encoder.encode_captions``; by default ``text_emb``, the captions as queries),
        and with ``ranking.both_towers`` the captions as queries too. ``photo_queries``: the photos as queries
        ranking captions (``Encoder.caption_query_photos``; by default ``image_emb``)."""
        both = ranking.both_towers and caption_emb is not None
        self.emb = {"image": image_emb if photo_queries is None else photo_queries,
                    "text": caption_emb if both else text_emb}
        self.items = {"image": image_emb, "text": text_emb if caption_emb is None else caption_emb}
        self.ranking, self.bank = ranking, bank if ranking.norm else None
        self.rerankers = (rerankers or {}) if ranking.rerank and hybrid.dense_scale(ranking.retriever) else {}
        self.keywords = keywords if ranking.retriever in ("keyword", "hybrid") else None
        self.sparse = sparse if ranking.retriever in ("sparse", "hybrid") else None
        self.timings = timings if timings is not None else Timings()
        self.bias = {kind: self.bank.biases(kind, emb) for kind, emb in self.items.items()} if self.bank else {}
        self.tower = None if tower is None or self.bank is None else TowerBiases(
            tower[1], tower[0].biases("image", image_emb), tower[0].share)

    def __call__(self, direction: str, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores (queries, items) whose row order is search's order (the re-ranked or diversified head of
        each row lifted above the rest, in its order)."""
        scores, kind = self._retrieve(direction, queries, items)
        if kind in self.rerankers or self.ranking.diverse:
            n = POOL if self.ranking.diverse else min(self.ranking.rerank, len(items))
            for row, query in zip(scores, queries, strict=True):
                head = self._order(row, int(query), items, kind, POOL)[1][:n]
                row[head] = row.max() + 1 + np.arange(len(head), 0, -1, dtype=np.float32)
        return scores

    def ranked(self, direction: str, queries: np.ndarray, items: np.ndarray, k: int
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        """What search returns for each query: (scores, item positions), best first, at most ``k``."""
        scores, kind = self._retrieve(direction, queries, items)
        out = []
        for row, query in zip(scores, queries, strict=True):
            ranked_scores, positions = self._order(row, int(query), items, kind, k)
            out.append((ranked_scores[:k], positions[:k]))
        return out

    def _retrieve(self, direction: str, queries: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, str]:
        started = time.perf_counter()
        query_kind, kind = ("image", "text") if direction == "i2t" else ("text", "image")
        self.timings.queries += len(queries)
        scores = inner_products(self.items[kind][items], self.emb[query_kind][queries])
        if self.bank is not None:
            took = self.tower.took[queries] if self.tower is not None and kind == "image" else None
            if took is not None and took.any():
                scores[took] -= np.float32(self.tower.share) * self.tower.biases[items]
                scores[~took] -= np.float32(self.bank.share) * self.bias[kind][items]
            else:
                scores -= np.float32(self.bank.share) * self.bias[kind][items]
        started = self.timings.add("retrieve", started)
        if self.ranking.retriever != "dense":  # over every item: the candidates of all of search's lists, and more
            bm25 = None if self.keywords is None else self.keywords(direction, queries, items)
            weights = (self.sparse(direction, queries, items) if self.sparse is not None and (
                self.ranking.retriever == "sparse" or hybrid.with_words(query_kind, kind, self.ranking.rerank > 0))
                else None)
            scores = hybrid.set_scores(self.ranking.retriever, scores, bm25, weights)
            self.timings.add("keywords", started)
        return scores, kind

    def _order(self, row: np.ndarray, query: int, items: np.ndarray, kind: str, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """One query's ranked list (scores, item positions) as search orders it: by score, the top N re-ranked,
        and when diversifying the ``k`` that MMR picks from the pool."""
        order = np.lexsort((np.arange(len(items)), -row))
        ranked = row[order], order
        if kind in self.rerankers:
            started = time.perf_counter()
            scorer, weight = self.rerankers[kind]
            n = min(self.ranking.rerank, len(order))
            logits = scorer(query, items[order[:n]])
            if logits is not None:
                ranked = rerank_top(*ranked, n, logits, weight)
            self.timings.add("rerank", started)
        if self.ranking.diverse:
            started = time.perf_counter()
            pool_scores, pool = ranked[0][:max(k, POOL)], ranked[1][:max(k, POOL)]
            picked = mmr(pool_scores, self.items[kind][items[pool]], self.ranking.diversity, k)
            ranked = pool_scores[picked], pool[picked]
            self.timings.add("diversify", started)
        return ranked
