"""Exact inner-product top-k: a batched matrix product, read in blocks to bound memory."""

from __future__ import annotations

import numpy as np

BLOCK = 65536
# A mask that keeps at least this share of the rows is applied to the scores of contiguous blocks: gathering
# the rows it keeps would copy most of the matrix on every search.
SCAN_SHARE = 0.25


def scores(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Inner products (Q, N) of queries against stored vectors: the one place a search score is computed. The
    stored rows lead the product: BLAS runs (N, d) x (d, Q) about 2x faster than (Q, d) x (d, N) for a few queries."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    return (np.asarray(vectors, dtype=np.float32) @ queries.T).T


def topk(vectors: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None,
         bias: np.ndarray | None = None, shares: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` rows of ``vectors`` for each query by inner product, less ``shares[q] * bias[row]``
    when given (nearest-neighbour normalisation, search/normalise.py).

    Returns (scores (Q, k'), row indices (Q, k')) with k' = min(k, candidates), best first; equal
    scores are ordered by row index so results are deterministic. ``mask`` (N,) bool restricts the
    candidates before ranking, so the list is full whenever at least ``k`` rows match.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    rows = np.arange(len(vectors)) if mask is None else np.flatnonzero(mask)
    k = min(k, len(rows))
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    if k <= 0:
        return best_scores, best_rows
    contiguous = mask is None or len(rows) >= SCAN_SHARE * len(vectors)
    if contiguous:
        rows = np.arange(len(vectors))
    for start in range(0, len(rows), BLOCK):
        block_rows = rows[start:start + BLOCK]
        block = vectors[start:start + BLOCK] if contiguous else vectors[block_rows]
        block_scores = scores(block, queries)
        if bias is not None and shares is not None:
            block_scores -= np.outer(shares, bias[block_rows]).astype(np.float32)
        if contiguous and mask is not None:
            block_scores[:, ~mask[start:start + BLOCK]] = -np.inf
        best_scores = np.concatenate([best_scores, block_scores], axis=1)
        best_rows = np.concatenate([best_rows, np.broadcast_to(block_rows, block_scores.shape)], axis=1)
        if best_scores.shape[1] > k:
            best_scores, best_rows = _keep_best(best_scores, best_rows, k)
    order = np.lexsort((best_rows, -best_scores), axis=1)[:, :k]
    return np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best_rows, order, axis=1)


def _keep_best(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Narrow each row to the entries that can still be in its top k, keeping every entry tied with
    the k-th score so the final (score, row) order does not depend on where a partition cut ties."""
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
    width = int((scores >= kth).sum(1).max())
    keep = np.argpartition(-scores, width - 1, axis=1)[:, :width] if width < scores.shape[1] else None
    if keep is None:
        return scores, rows
    return np.take_along_axis(scores, keep, axis=1), np.take_along_axis(rows, keep, axis=1)
