"""Fused rerank evaluation: reorder the dual encoder's top N by ``dual + w * logit`` and measure RSUM.

Everything works on a dense (captions x photos) logit matrix with NaN where a pair was not scored, so
one scoring pass serves both directions, every N up to the largest, and raw or normalised dual scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..evaluation.metrics import Ranks, positive_ranks
from ..search.normalise import Bank
from ..search.pipeline import rerank_top

# fine at the low end: a reranker trained longer gives sharper logits, whose best weight can be under 0.005
WEIGHTS = (0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3,
           0.5, 1.0)
RERANK_OFFSET = 1e3  # lifts the reranked top N above everything else so only their order changes


def dual_scores(image_vec: np.ndarray, text_vec: np.ndarray, bank_images: np.ndarray | None = None,
                bank_texts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(text->image scores (M, N), image->text scores (N, M)); with reference vectors, normalised as search
    normalises them (search/normalise.py: photos against train captions, captions against train photos)."""
    sims = text_vec @ image_vec.T
    t2i, i2t = sims, sims.T.copy()
    if bank_texts is not None and bank_images is not None:
        bank = Bank(bank_texts, bank_images, fingerprint="")
        t2i = t2i - bank.share * bank.biases("image", image_vec)[None, :]
        i2t = i2t - bank.share * bank.biases("text", text_vec)[None, :]
    return np.ascontiguousarray(t2i, dtype=np.float32), np.ascontiguousarray(i2t, dtype=np.float32)


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """(Q, n) column indices of each row's n best scores, best first; ties go to the lower index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :n]


def needed_pairs(t2i: np.ndarray, i2t: np.ndarray, n: int) -> np.ndarray:
    """Boolean (M, N) mask of the (caption, photo) pairs a rerank at depth ``n`` must score in both directions."""
    need = np.zeros(t2i.shape, dtype=bool)
    rows = np.arange(len(t2i))[:, None]
    need[rows, top_n(t2i, n)] = True
    cols = np.arange(len(i2t))[:, None]
    need.T[cols, top_n(i2t, n)] = True
    return need


def fill_logits(logits: np.ndarray, need: np.ndarray,
                score_pairs: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Score the needed pairs not yet in ``logits`` (NaN) with ``score_pairs(caption_rows, photo_rows)``."""
    todo = need & np.isnan(logits)
    captions, photos = np.nonzero(todo)
    if len(captions):
        logits[captions, photos] = score_pairs(captions, photos)
    return logits


def fused_direction(scores: np.ndarray, logits: np.ndarray, n: int, weight: float) -> np.ndarray:
    """Scores whose row order is search's after reranking each row's top ``n`` (rows = queries): the pipeline's
    ``rerank_top`` orders them, and they are lifted above the rest."""
    top = top_n(scores, n)
    rows = np.arange(len(scores))[:, None]
    if np.isnan(logits[rows, top]).any():
        raise ValueError("a top-n pair has no logit: score it first (fill_logits)")
    fused = scores.astype(np.float64)
    for row, row_logits, cols in zip(fused, logits, top, strict=True):
        _, order = rerank_top(row[cols].astype(np.float32), cols, n, row_logits[cols], weight)
        row[order] = RERANK_OFFSET + np.arange(len(order), 0, -1)
    return fused


def fused_ranks(t2i: np.ndarray, i2t: np.ndarray, logits: np.ndarray, text_image: np.ndarray, n: int,
                weight_t2i: float, weight_i2t: float | None = None) -> Ranks:
    """Positive ranks of both directions after reranking each query's top ``n`` (``n = 0``: dual only)."""
    text_image = np.asarray(text_image, dtype=np.int64)
    weight_i2t = weight_t2i if weight_i2t is None else weight_i2t
    s_t2i = fused_direction(t2i, logits, n, weight_t2i) if n else t2i
    s_i2t = fused_direction(i2t, logits.T, n, weight_i2t) if n else i2t
    t2i_ranks = positive_ranks(s_t2i, text_image[:, None])
    counts = np.bincount(text_image, minlength=len(i2t))
    captions = np.full((len(i2t), max(int(counts.max()), 1)), -1, dtype=np.int64)
    fill = np.zeros(len(i2t), dtype=np.int64)
    for j, photo in enumerate(text_image):
        captions[photo, fill[photo]] = j
        fill[photo] += 1
    return Ranks(positive_ranks(s_i2t, captions), t2i_ranks)


def rsum_parts(ranks: Ranks) -> tuple[float, float]:
    """(image->text R@1+5+10, text->image R@1+5+10)."""
    m = ranks.metrics()
    return (sum(m[f"i2t_R@{k}"] for k in (1, 5, 10)), sum(m[f"t2i_R@{k}"] for k in (1, 5, 10)))


def best_weights(t2i: np.ndarray, i2t: np.ndarray, logits: np.ndarray, text_image: np.ndarray, n: int,
                 weights: Iterable[float] = WEIGHTS) -> dict[str, float]:
    """Best shared w and best per-direction w at depth ``n``, with their RSUM (and the dual-only RSUM)."""
    rows = []
    for w in weights:
        rows.append((w, *rsum_parts(fused_ranks(t2i, i2t, logits, text_image, n, w))))
    shared = max(rows, key=lambda r: (r[1] + r[2], -r[0]))
    best_i2t = max(rows, key=lambda r: (r[1], -r[0]))
    best_t2i = max(rows, key=lambda r: (r[2], -r[0]))
    dual = rsum_parts(fused_ranks(t2i, i2t, logits, text_image, 0, 0.0))
    return {"n": n, "dual_rsum": sum(dual), "w": shared[0], "rsum": shared[1] + shared[2],
            "i2t": shared[1], "t2i": shared[2], "w_i2t": best_i2t[0], "w_t2i": best_t2i[0],
            "rsum_split_w": best_i2t[1] + best_t2i[2]}


def rerank_table(image_vec: np.ndarray, text_vec: np.ndarray, text_image: np.ndarray,
                 score_pairs: Callable[[np.ndarray, np.ndarray], np.ndarray], bank_images: np.ndarray,
                 bank_texts: np.ndarray, depths: Sequence[int] = (8, 16, 32, 64),
                 weights: Iterable[float] = WEIGHTS, logits: np.ndarray | None = None) -> tuple[list[dict], np.ndarray]:
    """Rows of figures for every depth, without and with normalised dual scores; returns the logit matrix too."""
    weights = list(weights)
    raw = dual_scores(image_vec, text_vec)
    norm = dual_scores(image_vec, text_vec, bank_images, bank_texts)
    if logits is None:
        logits = np.full((len(text_vec), len(image_vec)), np.nan, dtype=np.float32)
    deepest = max(depths)
    for t2i, i2t in (raw, norm):
        fill_logits(logits, needed_pairs(t2i, i2t, deepest), score_pairs)
    table = []
    for label, (t2i, i2t) in (("raw", raw), ("norm", norm)):
        for n in depths:
            table.append({"scores": label, **best_weights(t2i, i2t, logits, text_image, n, weights)})
    return table, logits
