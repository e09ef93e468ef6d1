"""Maximal marginal relevance (Carbonell and Goldstein, SIGIR 1998): re-order a ranked list so that each
next result is both relevant and unlike the results above it, so ten near-identical burst shots do not
fill the first page.

Each step picks the candidate with the largest ``lam * relevance - (1 - lam) * redundancy``, where
relevance is the pipeline's score rescaled to [0, 1] over the candidates (so ``lam`` means the same for
every model and score range) and redundancy is the candidate's largest cosine similarity to a result
already picked, at least 0 (a photo unrelated to every pick is not rewarded for pointing away from them).
``lam`` 1 keeps the ranked order; lower is more diverse.
"""

from __future__ import annotations

import numpy as np

# Candidates a page is chosen from. Fixed rather than a multiple of k: greedy MMR over the same pool gives
# the same first results whatever the page size, so page 2 continues page 1.
POOL = 200


def check_lambda(lam: float) -> float:
    """``lam`` as a float, refused unless it lies in [0, 1]."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"the diversity lambda must be between 0 (most diverse) and 1 (off), not {lam}")
    return float(lam)


def mmr(scores: np.ndarray, vectors: np.ndarray, lam: float, k: int) -> np.ndarray:
    """Positions of ``k`` candidates (rows of ``scores`` and ``vectors``, ranked best first) in MMR order."""
    n = len(scores)
    k = min(k, n)
    if lam >= 1.0 or n < 3:
        return np.arange(k)
    scores = np.asarray(scores, dtype=np.float32)
    span = float(scores.max() - scores.min())
    relevance = (scores - scores.min()) / span if span > 0 else np.ones(n, dtype=np.float32)
    unit = np.asarray(vectors, dtype=np.float32)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    redundancy = np.zeros(n, dtype=np.float32)  # nothing picked yet: the first pick is the most relevant
    free = np.ones(n, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    for step in range(k):
        value = np.where(free, lam * relevance - (1.0 - lam) * redundancy, -np.inf)
        pick = int(np.argmax(value))  # ties go to the better-ranked candidate
        order[step], free[pick] = pick, False
        np.maximum(redundancy, unit @ unit[pick], out=redundancy)  # a row at a time: k of them, not n
    return order
