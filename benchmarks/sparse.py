"""Learned sparse retrieval next to dense, keyword and hybrid on Flickr8k, and what the sparse index costs.

    python benchmarks/sparse.py [--heads lite-sparse.npz] [--splits dev test] [--million]

RSUM of each retriever as eval ranks it (search/pipeline.py's SetScores, normalisation on, no rerank, so
the retrieval stage is compared alone); the hybrid's sparse share is swept on the first split (dev).
Keyword evidence: a caption query ranking photos reads their file names (numeric in Flickr8k), a photo
query has no words. Index bytes per item: float32 dense vectors against the sparse postings (4-byte item
index and 2-byte weight per term, plus offsets). --million: 1M synthetic photo rows drawn with the trained
heads' sparsity (terms by their dev frequency, weights from dev) queried by dev captions through the
inverted index, against exact dense search over 1M x dim float32 vectors, both on one thread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

from crossmodal.encoders import load_encoder
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.evaluation.runner import Embedded, pipeline_scores
from crossmodal.search import hybrid
from crossmodal.search.normalise import find_bank
from crossmodal.search.pipeline import Ranking
from crossmodal.search.sparse import SparseHeads, SparseIndex, find_sparse
from crossmodal.sources.datasets import load_dataset
from crossmodal.training.train_sparse import split_features

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"
SHARES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def rsum(encoder, emb: Embedded, bank, heads: SparseHeads, retriever: str) -> float:
    score = pipeline_scores(encoder, emb, Ranking(norm=True, rerank=0, retriever=retriever), bank, None,
                            sparse_heads=heads)
    return evaluate_embeddings(emb.images, emb.texts, emb.data.text_image, score).metrics((1, 5, 10))["rsum"]


def split_table(encoder, bank, heads: SparseHeads, dataset: str, split: str, cache: Path, sweep: bool) -> None:
    data = load_dataset(dataset, split)
    features = split_features(encoder, data, cache / f"sparse-{encoder.fingerprint}-{split}.npz")
    emb = Embedded(data, features.images, features.texts, 0.0, 0.0)
    print(f"\n{split} ({len(emb.images)} photos, {len(emb.texts)} captions), normalisation on, no rerank")
    rows = {r: rsum(encoder, emb, bank, heads, r) for r in ("dense", "sparse", "keyword", "hybrid")}
    if sweep:
        default = hybrid.SPARSE_WEIGHT
        for share in SHARES:
            hybrid.SPARSE_WEIGHT = share
            rows[f"hybrid, sparse share {share}"] = rsum(encoder, emb, bank, heads, "hybrid")
        hybrid.SPARSE_WEIGHT = default
    for name, value in rows.items():
        print(f"  {name:<28} RSUM {value:7.2f}  ({value - rows['dense']:+.2f} vs dense)")
    photos = SparseIndex(np.arange(len(emb.images)), heads.encode(emb.images, "image"))
    captions = SparseIndex(np.arange(len(emb.texts)), heads.encode(emb.texts, "text"))
    dense = emb.images.shape[1] * 4
    for name, index in (("photos", photos), ("captions", captions)):
        per = index.nbytes() / len(index)
        print(f"  index bytes per {name[:-1]}: sparse {per:.0f} ({index.rows.nnz / len(index):.1f} terms), "
              f"dense float32 {dense} -> {100 * per / dense:.1f}%")


def million(heads: SparseHeads, features, n: int = 1_000_000, queries: int = 100, seed: int = 0) -> None:
    """Query latency at ``n`` synthetic photo rows: inverted index against exact dense search."""
    rng = np.random.default_rng(seed)
    dev_rows = heads.encode(features.images, "image")
    frequency = np.bincount(dev_rows.indices, minlength=len(heads.vocab)).astype(np.float64)
    per_row = heads.top["image"]
    # terms drawn by their dev frequency (a term drawn twice in a row counts once, with the summed weight)
    terms = rng.choice(len(frequency), size=(n, per_row), p=frequency / frequency.sum()).astype(np.int32)
    weights = rng.choice(dev_rows.data, size=n * per_row).astype(np.float32)
    rows = sparse.csr_matrix((weights, terms.reshape(-1), np.arange(0, n * per_row + 1, per_row)),
                             shape=(n, len(heads.vocab)))
    index = SparseIndex(np.arange(n), rows)
    query_rows = heads.encode(features.texts[:queries], "text")
    vectors = rng.normal(size=(n, features.images.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with threadpool_limits(1):
        started = time.perf_counter()
        for q in range(queries):
            index.search(query_rows[q], 10)
        sparse_ms = 1000 * (time.perf_counter() - started) / queries
        started = time.perf_counter()
        for q in range(min(queries, 20)):
            scores = vectors @ features.texts[q]
            np.argpartition(-scores, 10)[:10]
        dense_ms = 1000 * (time.perf_counter() - started) / min(queries, 20)
    print(f"\n{n:,} synthetic photo rows ({per_row} terms each, {index.nbytes() / 1e6:.0f} MB of postings; dense "
          f"{vectors.nbytes / 1e6:.0f} MB): sparse {sparse_ms:.1f} ms/query, exact dense {dense_ms:.1f} ms/query "
          f"(one thread) -> {dense_ms / sparse_ms:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite")
    parser.add_argument("--heads", type=Path, help="Sparse heads (default: the model's own).")
    parser.add_argument("--splits", nargs="+", default=["dev", "test"])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    parser.add_argument("--million", action="store_true", help="Also time 1M synthetic rows.")
    args = parser.parse_args()
    encoder = load_encoder(args.model)
    heads = SparseHeads.load(args.heads) if args.heads else find_sparse(encoder.fingerprint)
    if heads is None:
        raise SystemExit(f"no sparse heads for {args.model} (give --heads)")
    bank = find_bank(encoder.fingerprint)
    print(f"sparse heads: {len(heads.vocab)} WordPiece terms, top {heads.top}; hybrid: keyword share "
          f"{hybrid.WEIGHT}, sparse share {hybrid.SPARSE_WEIGHT}")
    for i, split in enumerate(args.splits):
        split_table(encoder, bank, heads, args.dataset, split, args.cache, sweep=i == 0)
    if args.million:
        data = load_dataset(args.dataset, args.splits[0])
        million(heads, split_features(encoder, data, args.cache / f"sparse-{encoder.fingerprint}-{args.splits[0]}.npz"))


if __name__ == "__main__":
    main()
