"""Run a retrieval evaluation: encode a dataset with any encoder, rank, and collect every metric.

It uses the encoders and the score function of ``crossmodal search``, so the numbers it reports
are the numbers users get.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from ..encoders.base import Encoder
from ..search.exact import topk
from ..sources.datasets import CaptionDataset
from ..sources.images import ImageError, load_image
from .metrics import Ranks, evaluate_embeddings, folded_metrics, mean_rank_variance


@dataclass
class Embedded:
    """A dataset's vectors; photos that could not be read are dropped with their captions."""

    data: CaptionDataset
    images: np.ndarray
    texts: np.ndarray
    image_seconds: float
    text_seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)


def embed_dataset(encoder: Encoder, data: CaptionDataset, progress: bool = True) -> Embedded:
    """Encode every photo and caption of ``data`` (timed, for the report's throughput)."""
    batch = encoder.batch_size
    vectors, keep, skipped = [], np.ones(len(data.images), dtype=bool), []
    start = time.perf_counter()
    for lo in tqdm(range(0, len(data.images), batch), desc="photos", unit="batch", disable=not progress):
        loaded = []
        for i in range(lo, min(lo + batch, len(data.images))):
            try:
                loaded.append(load_image(data.images[i]))
            except ImageError as e:
                keep[i] = False
                skipped.append((str(data.images[i]), str(e)))
                tqdm.write(f"skipped {data.images[i]}: {e}")
        if loaded:
            vectors.append(encoder.encode_images(loaded))
    image_seconds = time.perf_counter() - start
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
    return Embedded(data, images, texts, image_seconds, text_seconds, skipped)


def worst_queries(emb: Embedded, ranks: Ranks, n: int = 10, shown: int = 3) -> dict[str, list[dict[str, Any]]]:
    """The queries whose first positive ranks lowest, with what was retrieved instead."""
    data = emb.data
    out: dict[str, list[dict[str, Any]]] = {"t2i": [], "i2t": []}
    t2i_first = ranks.t2i[:, 0]
    worst_t = np.argsort(-t2i_first, kind="stable")[:n]
    _, rows = topk(emb.images, emb.texts[worst_t], shown)
    for q, retrieved in zip(worst_t, rows, strict=True):
        out["t2i"].append({"caption": data.texts[q], "image": str(data.images[data.text_image[q]]),
                           "rank": int(t2i_first[q]) + 1, "retrieved": [str(data.images[r]) for r in retrieved]})
    i2t_first = ranks.i2t[:, 0]
    worst_i = np.argsort(-i2t_first, kind="stable")[:n]
    _, rows = topk(emb.texts, emb.images[worst_i], shown)
    for q, retrieved in zip(worst_i, rows, strict=True):
        out["i2t"].append({"image": str(data.images[q]), "rank": int(i2t_first[q]) + 1,
                           "captions": [data.texts[j] for j in np.flatnonzero(data.text_image == q)],
                           "retrieved": [data.texts[r] for r in retrieved]})
    return out


def evaluate(encoder: Encoder, data: CaptionDataset, ks: tuple[int, ...] = (1, 5, 10), folds: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Every metric of ``encoder`` on ``data``; returns the report dictionary (see report.py)."""
    started = time.perf_counter()
    emb = embed_dataset(encoder, data, progress)
    ranks = evaluate_embeddings(emb.images, emb.texts, emb.data.text_image)
    metrics = ranks.metrics(ks)
    if folds:
        metrics |= {f"{folds}fold_{k}": v for k, v in
                    folded_metrics(emb.images, emb.texts, emb.data.text_image, folds, ks).items()}
    if emb.data.langs and emb.data.groups:
        metrics["mrv"] = mean_rank_variance(ranks.t2i[:, 0], emb.data.langs, emb.data.groups)
    n_images, n_texts = len(emb.images), len(emb.texts)
    return {
        "metrics": metrics,
        "model": {"name": encoder.name, "fingerprint": encoder.fingerprint, "dim": encoder.dim},
        "dataset": {"name": data.name, "images": n_images, "texts": n_texts, "skipped_images": emb.skipped},
        "throughput": {
            "images_per_second": n_images / emb.image_seconds if emb.image_seconds else None,
            "texts_per_second": n_texts / emb.text_seconds if emb.text_seconds else None,
        },
        "curves": {"i2t": ranks.curve("i2t"), "t2i": ranks.curve("t2i")},
        "worst": worst_queries(emb, ranks),
        "wall_seconds": time.perf_counter() - started,
        "protocol": {"ties": "equal scores: lower index ranks first",
                     "no_positive": "queries without a positive are left out",
                     "folds": folds or 1},
    }
