"""Run a retrieval evaluation: encode a dataset with any encoder, rank, and collect every metric.

It uses the encoders and the score function of ``crossmodal search``, so the numbers it reports
are the numbers users get.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ..collection import keywords
from ..encoders import model_folder
from ..encoders.base import Encoder
from ..search.normalise import Bank
from ..search.pipeline import Ranking, SetScores, Timings
from ..search.rerank import dataset_scorers
from ..search.sparse import SPARSE_FILE, SparseModel, find_sparse
from ..search.sparse_words import find_words
from ..sources.datasets import CaptionDataset
from ..sources.images import ImageError, load_image
from .metrics import (
    MRV_CONVENTION,
    Ranks,
    Scores,
    evaluate_embeddings,
    folded_metrics,
    mean_rank_variance,
    per_language_metrics,
)

if TYPE_CHECKING:
    from ..rerank.runtime import Reranker


@dataclass
class Embedded:
    """A dataset's vectors; photos that could not be read are dropped with their captions."""

    data: CaptionDataset
    images: np.ndarray
    texts: np.ndarray
    image_seconds: float
    text_seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    photo_tokens: np.ndarray | None = None  # the reranker's tokens of each photo, when reranking
    photo_words: np.ndarray | None = None  # P(word | photo) of each photo, when the reranker has a word classifier
    captions: np.ndarray | None = None  # the captions' vectors as a collection stores them, when not ``texts``
    # the photos' vectors as queries ranking captions (``Encoder.caption_query_photos``), when not ``images``
    photo_queries: np.ndarray | None = None

    @property
    def caption_vectors(self) -> np.ndarray:
        """What photo queries rank: the captions as stored (``Encoder.encode_captions``)."""
        return self.texts if self.captions is None else self.captions

    @property
    def query_photos(self) -> np.ndarray:
        """What photo queries ranking captions are: the photos as ``Encoder.caption_query_photos`` reads them."""
        return self.images if self.photo_queries is None else self.photo_queries


def embed_dataset(encoder: Encoder, data: CaptionDataset, progress: bool = True,
                  reranker: Reranker | None = None) -> Embedded:
    """Encode every photo and caption of ``data`` (timed, for the report's throughput; a photo's second reading as a
    query ranking captions is left out of that time); with a ``reranker``, also its tokens and word probabilities of
    each photo, from the same model call (as indexing and a photo query compute them)."""
    batch = encoder.batch_size
    vectors, queries, tokens, words, keep, skipped = [], [], [], [], np.ones(len(data.images), dtype=bool), []
    start, querying = time.perf_counter(), 0.0
    for lo in tqdm(range(0, len(data.images), batch), desc="photos", unit="batch", disable=not progress):
        loaded = []
        for i in range(lo, min(lo + batch, len(data.images))):
            try:
                loaded.append(load_image(data.images[i]))
            except ImageError as e:
                keep[i] = False
                skipped.append((str(data.images[i]), str(e)))
                tqdm.write(f"skipped {data.images[i]}: {e}")
        if not loaded:
            continue
        prepared = [encoder.prepare_image(im) for im in loaded]
        if reranker is not None:
            encoded, grids = encoder.encode_prepared_grids(prepared)
            tokens.append(reranker.photo_tokens(grids))
            if reranker.words is not None:
                words.append(reranker.photo_words(grids))
        else:
            encoded = encoder.encode_prepared(prepared)
        vectors.append(encoded)
        started = time.perf_counter()
        queries.append(encoder.caption_query_photos(encoded, prepared))
        querying += time.perf_counter() - started
    image_seconds = time.perf_counter() - start - querying
    if not keep.any():
        path, reason = skipped[0] if skipped else ("", "the dataset has no photos")
        raise ValueError(f"none of the {len(keep)} photos could be read (first: {path}: {reason}); "
                         "check the dataset path or --images")
    if not keep.all():
        data = data.subset_images(keep)
    start = time.perf_counter()
    texts = encoder.encode_texts(data.texts)
    text_seconds = time.perf_counter() - start
    images = np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), dtype=np.float32)
    return Embedded(data, images, texts, image_seconds, text_seconds, skipped,
                    np.concatenate(tokens) if tokens else None, np.concatenate(words) if words else None,
                    encoder.blend_captions(data.texts, texts), np.concatenate(queries) if queries else images)


def _top(score: Scores, direction: str, queries: np.ndarray, n_items: int, shown: int) -> np.ndarray:
    matrix = score(direction, queries, np.arange(n_items))
    return np.stack([np.lexsort((np.arange(n_items), -row))[:shown] for row in matrix]) if len(queries) else \
        np.zeros((0, shown), dtype=np.int64)


def worst_queries(emb: Embedded, ranks: Ranks, score: Scores, n: int = 10, shown: int = 3
                  ) -> dict[str, list[dict[str, Any]]]:
    """The queries whose first positive ranks lowest, with what was retrieved instead (as ``score`` ranks)."""
    data = emb.data
    out: dict[str, list[dict[str, Any]]] = {"t2i": [], "i2t": []}
    t2i_first = ranks.t2i[:, 0]
    worst_t = np.argsort(-t2i_first, kind="stable")[:n]
    rows = _top(score, "t2i", worst_t, len(emb.images), shown)
    for q, retrieved in zip(worst_t, rows, strict=True):
        out["t2i"].append({"caption": data.texts[q], "image": str(data.images[data.text_image[q]]),
                           "rank": int(t2i_first[q]) + 1, "retrieved": [str(data.images[r]) for r in retrieved]})
    i2t_first = ranks.i2t[:, 0]
    worst_i = np.argsort(-i2t_first, kind="stable")[:n]
    rows = _top(score, "i2t", worst_i, len(emb.texts), shown)
    for q, retrieved in zip(worst_i, rows, strict=True):
        out["i2t"].append({"image": str(data.images[q]), "rank": int(i2t_first[q]) + 1,
                           "captions": [data.texts[j] for j in np.flatnonzero(data.text_image == q)],
                           "retrieved": [data.texts[r] for r in retrieved]})
    return out


def pipeline_scores(encoder: Encoder, emb: Embedded, ranking: Ranking, bank: Bank | None,
                    reranker: Reranker | None, timings: Timings | None = None,
                    sparse_heads: SparseModel | None = None) -> SetScores:
    """The search pipeline's ranking of an embedded dataset (``reranker`` needs ``emb.photo_tokens``; the sparse
    and hybrid retrievers use ``sparse_heads``, by default the model's own as a collection finds them: its sparse
    heads, and its reranker's word classifier for hybrid)."""
    rerankers = {} if reranker is None or not ranking.rerank else {
        kind: (scorer, reranker.weight)
        for kind, scorer in dataset_scorers(encoder, reranker, emb.data, emb.photo_tokens,
                                            words=emb.photo_words).items()}
    heads: SparseModel | None = None
    if ranking.retriever == "hybrid":  # the caption words, as a collection's hybrid retriever reads them
        heads = sparse_heads or find_words(reranker if emb.photo_words is not None else None, lambda: encoder)
    elif ranking.retriever == "sparse":
        own = model_folder(encoder.name)  # a trained model's own, as its collections find them
        heads = sparse_heads or find_sparse(encoder.fingerprint, *([own / SPARSE_FILE] if own else []))
        if heads is None:
            raise ValueError(f"the model {encoder.name!r} has no sparse heads (train some with `crossmodal train "
                             "--sparse`)")
    tower = encoder.multilingual
    took = np.array([not encoder.reads_natively(t) for t in emb.data.texts], dtype=bool)
    return SetScores(emb.images, emb.texts, ranking, bank, rerankers, timings,
                     dataset_keywords(emb.data) if ranking.retriever != "dense" else None,
                     None if heads is None else dataset_sparse(heads, emb, ranking.both_towers),
                     (tower.bank, took) if tower is not None and tower.bank is not None and took.any() else None,
                     emb.caption_vectors, emb.query_photos)


def dataset_sparse(heads: SparseModel, emb: Embedded, both_towers: bool = False
                   ) -> Callable[[str, np.ndarray, np.ndarray], np.ndarray]:
    """Sparse scores between a dataset's photos and captions, as a collection's sparse index gives them; with
    ``both_towers``, caption queries are read from the captions as stored, as search encodes such a query."""
    rows = heads.dataset_rows(emb)
    queries_of = {"image": rows["image"], "text": rows["caption" if both_towers else "text"]}

    def scores(direction: str, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
        query_kind, kind = ("image", "text") if direction == "i2t" else ("text", "image")
        return (queries_of[query_kind][queries] @ rows["caption" if kind == "text" else kind][items].T
                ).toarray().astype(np.float32)

    return scores


def dataset_keywords(data: CaptionDataset) -> Callable[[str, np.ndarray, np.ndarray], np.ndarray]:
    """BM25 scores as a collection of the dataset would give them: photos by their paths, captions by their
    words. Photo queries have no words (a zero row), so only caption queries ranking photos can match."""
    db = keywords.memory_index([(i, "image", str(path), None) for i, path in enumerate(data.images)])

    def scores(direction: str, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = np.zeros((len(queries), len(items)), dtype=np.float32)
        if direction == "t2i":
            where = {int(item): col for col, item in enumerate(items)}
            for row, query in enumerate(queries):
                found, ids = keywords.search(db, data.texts[int(query)], "image", len(data.images))
                cols = [where.get(int(i), -1) for i in ids]
                out[row, [c for c in cols if c >= 0]] = found[[j for j, c in enumerate(cols) if c >= 0]]
        return out

    return scores


def evaluate(encoder: Encoder, data: CaptionDataset, ks: tuple[int, ...] = (1, 5, 10), folds: int | None = None,
             progress: bool = True, ranking: Ranking | None = None, bank: Bank | None = None,
             reranker: Reranker | None = None) -> dict[str, Any]:
    """Every metric of ``encoder`` on ``data`` as search ranks it; returns the report dictionary (see report.py).

    ``ranking`` (default: plain dual-encoder scores) runs the search pipeline's stages; normalisation needs
    ``bank``, the model's reference bank (search/normalise.py), and reranking ``reranker``.
    """
    started = time.perf_counter()
    ranking = ranking or Ranking(norm=False, rerank=0)
    # the reranker's photo inputs are computed when it reranks, or when its word classifier gives sparse evidence
    reranker = reranker if (ranking.rerank or ranking.retriever == "hybrid") and encoder.rerank_inputs \
        else None
    emb = embed_dataset(encoder, data, progress, reranker)
    timings = Timings()
    score = pipeline_scores(encoder, emb, ranking, bank, reranker, timings)
    ranks = evaluate_embeddings(emb.images, emb.texts, emb.data.text_image, score)
    metrics = ranks.metrics(ks)
    if folds:
        metrics |= {f"{folds}fold_{k}": v for k, v in
                    folded_metrics(emb.images, emb.texts, emb.data.text_image, folds, ks, score).items()}
    by_lang = None
    if emb.data.langs:
        by_lang = per_language_metrics(emb.images, emb.texts, emb.data.text_image, emb.data.langs, ranks.t2i, ks,
                                       score)
        if emb.data.groups:
            metrics["mrv"] = mean_rank_variance(ranks.t2i[:, 0], emb.data.langs, emb.data.groups)
    n_images, n_texts = len(emb.images), len(emb.texts)
    return {
        "metrics": metrics,
        **({"by_lang": by_lang} if by_lang is not None else {}),
        "model": {"name": encoder.name, "fingerprint": encoder.fingerprint, "dim": encoder.dim},
        "dataset": {"name": data.name, "images": n_images, "texts": n_texts, "skipped_images": emb.skipped},
        "throughput": {
            "images_per_second": n_images / emb.image_seconds if emb.image_seconds else None,
            "texts_per_second": n_texts / emb.text_seconds if emb.text_seconds else None,
        },
        "curves": {"i2t": ranks.curve("i2t"), "t2i": ranks.curve("t2i")},
        "worst": worst_queries(emb, ranks, score),
        "pipeline": {**ranking.to_dict(), "bank": bank.id if bank is not None and ranking.norm else None,
                     "reranker": reranker.fingerprint if reranker is not None else None,
                     "photo_queries": "ranking captions: the mean of the photo's and its mirror image's unit vectors",
                     "stage_ms_per_query": timings.per_query_ms()},
        "wall_seconds": time.perf_counter() - started,
        "protocol": {"ties": "equal scores: lower index ranks first",
                     "no_positive": "queries without a positive are left out",
                     "folds": folds or 1,
                     **({"mrv": MRV_CONVENTION} if by_lang is not None else {})},
    }
