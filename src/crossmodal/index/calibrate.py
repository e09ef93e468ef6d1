"""Choosing HNSW's ``ef_search`` on the collection's own vectors: the least search effort that reaches
the recall target, instead of a fixed table measured on other data (which can cost 2.5x the latency)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..search.exact import topk
from .base import VectorIndex

EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
SAMPLE = 500
MARGIN = 0.005  # the sample's recall is an estimate: aim a little above the target
K = 10


def calibrate_ef(index: VectorIndex, ids: np.ndarray, vectors: Any, recall: float, bias_column: int,
                 query_share: float = 0.0, seed: int = 0) -> tuple[int, float]:
    """(ef_search, recall@10 it measured) for ``index`` over (``ids``, ``vectors``): stored vectors drawn
    at random serve as queries (``query_share`` in ``bias_column``, as normalised queries carry it), their
    exact top 10 is the truth, and the ladder stops at the first ef that reaches ``recall``."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(ids), size=min(SAMPLE, len(ids)), replace=False))
    queries = np.array(vectors[rows], dtype=np.float32)
    queries[:, bias_column] = query_share
    _, truth_rows = topk(vectors, queries, K + 1)
    own = ids[rows]
    truth = [t[t != me][:K] for t, me in zip(ids[truth_rows], own, strict=True)]  # a query finds itself: no test
    measured = 0.0
    for ef in EF_LADDER:
        index.params["ef_search"] = ef
        _, found = index.search(queries, K + 1)
        measured = float(np.mean([len(np.intersect1d(f[f != me], t)) / len(t)
                                  for f, t, me in zip(found, truth, own, strict=True)]))
        if measured >= min(recall + MARGIN, 1.0):
            return ef, measured
    return EF_LADDER[-1], measured
