"""The index kinds by name, and making, loading and building an index of any kind (FAISS)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .base import VectorIndex, VectorLookup, read_faiss
from .binary import BinaryIndex
from .flat import FlatIndex
from .hnsw import HNSWIndex
from .ivfpq import IVFPQIndex

KINDS: dict[str, type[VectorIndex]] = {cls.kind: cls for cls in (FlatIndex, HNSWIndex, IVFPQIndex, BinaryIndex)}


def make_index(kind: str, dim: int, **params: Any) -> VectorIndex:
    """A new empty index of ``kind`` with ``params`` (unknown kinds and parameters are refused)."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    try:
        return KINDS[kind](dim, **params)
    except TypeError as e:
        raise ValueError(f"bad parameters for a {kind} index: {e}") from None


def load_index(path: Path, mmap: bool = True) -> VectorIndex:
    """Read an index written by ``VectorIndex.save``; memory-mapped where FAISS supports it."""
    meta = json.loads(path.with_suffix(".json").read_text())
    kind, dim, params = meta["kind"], meta["dim"], meta["params"]
    if "graph" in meta:  # saved without its rows: searches once the caller shares them (HNSWIndex.share_rows)
        return HNSWIndex.load_graph(path, dim, params, meta["graph"], mmap)
    index = KINDS[kind](dim, **params, index=read_faiss(path, mmap=mmap and kind in ("flat", "ivfpq", "hnsw"),
                                                        binary=kind == "binary", in_place=kind == "hnsw"))
    index._load_extra(path)
    return index


def build_index(kind: str, ids: np.ndarray, vectors: np.ndarray, train_size: int = 200_000, seed: int = 0,
                progress: bool = False, **params: Any) -> VectorIndex:
    """Build an index of ``kind`` over all ``vectors``, training on a random sample where needed."""
    index = make_index(kind, vectors.shape[1], **params)
    if hasattr(index, "reserve"):
        index.reserve(len(ids))
    if index.needs_training:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(vectors), size=min(train_size, len(vectors)), replace=False))
        index.train(np.asarray(vectors[sample], dtype=np.float32))
    add_in_batches(index, ids, vectors, progress, f"building the {kind} index")
    return index


def add_in_batches(index: VectorIndex, ids: np.ndarray, vectors: Any, progress: bool = False, desc: str = "",
                   batch: int = 20_000) -> None:
    """Add ``vectors`` (an array, or anything sliced into one) a batch at a time, with a progress bar
    (and its ETA) when asked, so that a large build never holds a second full copy."""
    with tqdm(total=len(ids), desc=desc, unit="item", disable=not progress or len(ids) <= batch,
              file=sys.stderr) as bar:
        for start in range(0, len(ids), batch):
            index.add(ids[start:start + batch], np.asarray(vectors[start:start + batch], dtype=np.float32))
            bar.update(min(batch, len(ids) - start))


__all__ = ["KINDS", "VectorIndex", "VectorLookup", "add_in_batches", "build_index", "load_index", "make_index"]
