"""Retrieval metrics as CLIP_benchmark, LAVIS and ECCV Caption define them.

- image->text: a photo is found at K when any of its captions is in its top K.
- text->image: a caption is found at K when its one photo is in its top K.
- RSUM: R@1 + R@5 + R@10, both directions (percentages).
- Median / mean rank: 1-based rank of the first positive (VSE++ "MedR" / "MeanR").
- R-Precision: with R positives, the share of positives in the top R.
- mAP@R: (1/R) * sum over positives ranked within the top R of (positives so far / their position).
- MRV: mean over caption groups of the variance, across languages, of the text->image rank.

Ties: among equal scores the lower index ranks first, so results are deterministic (a tie neither
helps nor hurts a positive by chance). Queries with no positive are left out of every mean.
Score matrices are computed one block of queries at a time, so memory stays bounded for COCO-5K.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..search.exact import scores as inner_products

BLOCK = 1024


def positive_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """0-based ranks of each row's positives, sorted ascending; -1 pads (as in ``positives``).

    ``scores`` is (B, N); ``positives`` (B, P) holds column indices of positives, -1 for padding.
    A positive's rank is the number of items scoring higher plus those scoring the same at a lower index.
    """
    valid = positives >= 0
    safe = np.where(valid, positives, 0)
    pos_scores = np.take_along_axis(scores, safe, axis=1)
    cols = np.arange(scores.shape[1])[None, :]
    ranks = np.empty(positives.shape, dtype=np.int64)
    for p in range(positives.shape[1]):
        s = pos_scores[:, p:p + 1]
        ranks[:, p] = (scores > s).sum(1) + ((scores == s) & (cols < safe[:, p:p + 1])).sum(1)
    ranks = np.where(valid, ranks, np.iinfo(np.int64).max)
    ranks.sort(axis=1)
    return np.where(ranks == np.iinfo(np.int64).max, -1, ranks)


def first_positive_rank(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """0-based rank of the best-ranked positive per row, from a boolean (B, N) mask; -1 without positive."""
    width = max(int(positive.sum(1).max(initial=0)), 1)
    padded = np.full((len(positive), width), -1, dtype=np.int64)
    for i, row in enumerate(positive):
        cols = np.flatnonzero(row)
        padded[i, : len(cols)] = cols
    return positive_ranks(scores, padded)[:, 0]


def _padded_groups(owner: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, max members) member indices per group, -1 padded: the captions of each image."""
    counts = np.bincount(owner, minlength=n_groups)
    out = np.full((n_groups, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    order = np.argsort(owner, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for g in range(n_groups):
        members = order[starts[g]:starts[g] + counts[g]]
        out[g, : len(members)] = members
    return out


# (direction "i2t" or "t2i", query indices, item indices) -> (queries, items) ranking scores.
Scores = Callable[[str, np.ndarray, np.ndarray], np.ndarray]


def inner_product_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> Scores:
    """Plain dual-encoder scores: inner products of the given embeddings."""
    def score(direction: str, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
        q, it = (image_emb, text_emb) if direction == "i2t" else (text_emb, image_emb)
        return inner_products(it[items], q[queries])
    return score


def retrieval_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                    score: Scores | None = None, image_ids: np.ndarray | None = None,
                    text_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image->text positive ranks (N, P), text->image ranks (M, 1)), 0-based, -1 padded, in blocks.

    ``score`` ranks (default: inner products); it is called with ``image_ids``/``text_ids`` (default:
    positions), the indices of these photos and captions in the set ``score`` knows (a fold's subset).
    """
    text_image = np.asarray(text_image, dtype=np.int64)
    image_ids = np.arange(len(image_emb)) if image_ids is None else image_ids
    text_ids = np.arange(len(text_emb)) if text_ids is None else text_ids
    if score is None:
        score = inner_product_scores(image_emb, text_emb)
        image_ids, text_ids = np.arange(len(image_emb)), np.arange(len(text_emb))
    i2t = image_to_text_ranks(score, image_ids, text_ids, _padded_groups(text_image, len(image_emb)))
    t2i = np.empty((len(text_emb), 1), dtype=np.int64)
    for start in range(0, len(text_emb), BLOCK):
        rows = slice(start, start + BLOCK)
        t2i[rows] = positive_ranks(score("t2i", text_ids[rows], image_ids), text_image[rows][:, None])
    return i2t, t2i


def image_to_text_ranks(score: Scores, image_ids: np.ndarray, text_ids: np.ndarray, captions: np.ndarray
                        ) -> np.ndarray:
    """Image->text positive ranks (N, P) of the photos ``image_ids`` among the captions ``text_ids``, in blocks;
    ``captions`` holds each photo's captions as positions in ``text_ids`` (-1 padded)."""
    i2t = np.empty(captions.shape, dtype=np.int64)
    for start in range(0, len(image_ids), BLOCK):
        rows = slice(start, start + BLOCK)
        i2t[rows] = positive_ranks(score("i2t", image_ids[rows], text_ids), captions[rows])
    return i2t


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Percentage of queries (with a positive) whose first positive ranks in the top ``k``."""
    first = ranks[:, 0] if ranks.ndim == 2 else ranks
    valid = first >= 0
    return 100.0 * float((first[valid] < k).mean()) if valid.any() else float("nan")


def r_precision_and_map_at_r(ranks: np.ndarray) -> tuple[float, float]:
    """(R-Precision, mAP@R) in percent, from sorted positive ranks (Q, P) with -1 padding."""
    valid = ranks >= 0
    n_pos = valid.sum(1)
    keep = n_pos > 0
    ranks, valid, n_pos = ranks[keep], valid[keep], n_pos[keep]
    if not len(ranks):
        return float("nan"), float("nan")
    within = valid & (ranks < n_pos[:, None])
    r_prec = within.sum(1) / n_pos
    hits_so_far = np.cumsum(valid, axis=1)  # j-th positive (sorted) has j+1 positives at or above it
    precision_at_hit = np.where(within, hits_so_far / np.maximum(ranks + 1, 1), 0.0)
    map_r = precision_at_hit.sum(1) / n_pos
    return 100.0 * float(r_prec.mean()), 100.0 * float(map_r.mean())


def rank_summary(ranks: np.ndarray) -> dict[str, float]:
    """Median and mean 1-based rank of the first positive."""
    first = ranks[:, 0]
    first = first[first >= 0] + 1
    if not len(first):
        return {"medr": float("nan"), "meanr": float("nan")}
    return {"medr": float(np.median(first)), "meanr": float(first.mean())}


MRV_CONVENTION = ("population variance (ddof 0), across the languages of a group, of the 1-based text->image rank "
                  "(a language's ranks averaged first when it has several captions in the group); mean over groups "
                  "with >= 2 languages")


def per_language_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                         langs: Sequence[str], t2i: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                         score: Scores | None = None) -> dict[str, dict[str, float]]:
    """Each language's metrics on its own, keyed like the overall ones: its captions ranking every photo (their
    rows of the whole set's text->image ranks ``t2i``: a caption ranks the photos alone), and every photo ranking
    the captions of that language (photos without one are left out as queries)."""
    score = score or inner_product_scores(image_emb, text_emb)
    langs_arr = np.asarray(langs)
    text_image = np.asarray(text_image)
    images = np.arange(len(image_emb))
    out = {}
    for lang in sorted(set(langs)):
        texts = np.flatnonzero(langs_arr == lang)
        i2t = image_to_text_ranks(score, images, texts, _padded_groups(text_image[texts], len(image_emb)))
        out[lang] = Ranks(i2t, t2i[texts]).metrics(ks)
    return out


def mean_rank_variance(t2i_first: np.ndarray, langs: Sequence[str], groups: Sequence[str]) -> float:
    """MRV: for each group of captions (one meaning in several languages), the variance across languages
    of the 1-based text->image rank (averaged within a language), then the mean over groups with >= 2
    languages. 0 means every language ranks the photo the same; NaN when no group spans two languages."""
    per: dict[str, dict[str, list[int]]] = {}
    for rank, lang, group in zip(t2i_first, langs, groups, strict=True):
        if rank >= 0:
            per.setdefault(group, {}).setdefault(lang, []).append(int(rank) + 1)
    variances = [np.var([np.mean(r) for r in by_lang.values()]) for by_lang in per.values() if len(by_lang) > 1]
    return float(np.mean(variances)) if variances else float("nan")


@dataclass
class Ranks:
    """Positive ranks of both directions for one evaluation, from which every metric is derived."""

    i2t: np.ndarray
    t2i: np.ndarray

    def metrics(self, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        out: dict[str, float] = {}
        for direction, ranks in (("i2t", self.i2t), ("t2i", self.t2i)):
            for k in sorted(set(ks) | {1, 5, 10}):
                out[f"{direction}_R@{k}"] = recall_at(ranks, k)
            r_prec, map_r = r_precision_and_map_at_r(ranks)
            out[f"{direction}_mAP@R"] = map_r
            out[f"{direction}_R-Precision"] = r_prec
            summary = rank_summary(ranks)
            out[f"{direction}_medr"] = summary["medr"]
            out[f"{direction}_meanr"] = summary["meanr"]
        out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
        return out

    def curve(self, direction: str, max_k: int = 50) -> list[float]:
        ranks = self.i2t if direction == "i2t" else self.t2i
        return [recall_at(ranks, k) for k in range(1, max_k + 1)]


def evaluate_embeddings(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                        score: Scores | None = None) -> Ranks:
    """Ranks of every query in both directions over the whole set (Flickr 1K, COCO 5K protocols)."""
    i2t, t2i = retrieval_ranks(image_emb, text_emb, text_image, score)
    return Ranks(i2t, t2i)


def recall_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Every metric over the whole set: ``i2t_R@K``, ``t2i_R@K``, ``rsum``, mAP@R, R-Precision, ranks."""
    return evaluate_embeddings(image_emb, text_emb, text_image).metrics(ks)


def folded_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray, folds: int,
                   ks: Sequence[int] = (1, 5, 10), score: Scores | None = None) -> dict[str, float]:
    """The COCO 1K protocol: split the photos into ``folds`` consecutive equal parts (with their
    captions), evaluate each part alone and average every metric over the parts."""
    text_image = np.asarray(text_image)
    size = len(image_emb) // folds
    results = []
    for f in range(folds):
        lo, hi = f * size, (f + 1) * size
        texts = np.flatnonzero((text_image >= lo) & (text_image < hi))
        ranks = retrieval_ranks(image_emb[lo:hi], text_emb[texts], text_image[texts] - lo, score,
                                np.arange(lo, hi), texts)
        results.append(Ranks(*ranks).metrics(ks))
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}
