"""Retrieval metrics as CLIP_benchmark and LAVIS define them.

image->text: a photo is found at K when any of its captions is in its top K.
text->image: a caption is found at K when its one photo is in its top K.
RSUM is the sum of R@1, R@5, R@10 in both directions (percentages).
Ties are broken by index: among equal scores the lower index ranks first, so results are deterministic.
"""

from __future__ import annotations

import numpy as np

BLOCK = 1024


def first_positive_rank(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """0-based rank of the best-ranked positive in each row of ``scores`` (-1 for rows with no positive).

    The best-ranked positive is the highest-scoring one (lowest index among ties); its rank is the
    number of items that score higher, plus those that score the same at a lower index.
    """
    masked = np.where(positive, scores, -np.inf)
    best = masked.argmax(axis=1)
    best_score = scores[np.arange(len(scores)), best][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    ranks = (scores > best_score).sum(1) + ((scores == best_score) & (cols < best[:, None])).sum(1)
    return np.where(positive.any(axis=1), ranks, -1)


def retrieval_ranks(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(image->text ranks (N,), text->image ranks (M,)), computed in blocks to bound memory."""
    text_image = np.asarray(text_image)
    n_images = len(image_emb)
    i2t = np.empty(n_images, dtype=np.int64)
    for start in range(0, n_images, BLOCK):
        rows = np.arange(start, min(start + BLOCK, n_images))
        scores = image_emb[rows] @ text_emb.T
        i2t[rows] = first_positive_rank(scores, text_image[None, :] == rows[:, None])
    t2i = np.empty(len(text_emb), dtype=np.int64)
    for start in range(0, len(text_emb), BLOCK):
        rows = np.arange(start, min(start + BLOCK, len(text_emb)))
        scores = text_emb[rows] @ image_emb.T
        t2i[rows] = first_positive_rank(scores, text_image[rows][:, None] == np.arange(n_images)[None, :])
    return i2t, t2i


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Percentage of queries (with a positive) whose first positive ranks in the top ``k``."""
    valid = ranks >= 0
    return 100.0 * float((ranks[valid] < k).mean()) if valid.any() else float("nan")


def recall_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                   ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """``i2t_R@K``, ``t2i_R@K`` for each K, and ``rsum``."""
    i2t, t2i = retrieval_ranks(image_emb, text_emb, text_image)
    out = {f"i2t_R@{k}": recall_at(i2t, k) for k in ks}
    out |= {f"t2i_R@{k}": recall_at(t2i, k) for k in ks}
    out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10) if f"{d}_R@{k}" in out)
    return out
