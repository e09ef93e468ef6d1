"""Learned sparse retrieval next to dense, keyword and hybrid on Flickr8k, and what the sparse index costs.

    python benchmarks/sparse.py [--heads lite-sparse.npz] [--splits dev test] [--million]

RSUM of each retriever as eval ranks it (search/pipeline.py's SetScores, normalisation on, no rerank, so
the retrieval stage is compared alone); the hybrid's sparse share is swept on the first split (dev). The sparse
retriever reads the model's sparse heads (``--heads``, by default the shipped ones); the hybrid's sparse
evidence is its reranker's caption-word classifier (search/sparse_words.py), whose photo words come from the
same model call as the vectors (``embed_dataset`` with the reranker), as a collection finds them; the words
alone as a retriever are measured too. Keyword evidence: a caption query ranking photos reads their file names
(numeric in Flickr8k), a photo query has no words. Index bytes per item: float32 dense vectors against the
sparse postings (4-byte item index and 2-byte weight per term, plus offsets). --million: 1M synthetic photo
rows drawn with each sparse model's sparsity (terms by their dev frequency, weights from dev) queried by dev
captions' rows through the inverted index, against exact dense search over 1M x dim float32 vectors, both on
one thread.
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
from crossmodal.evaluation.runner import Embedded, embed_dataset, pipeline_scores
from crossmodal.search import hybrid
from crossmodal.search.normalise import find_bank
from crossmodal.search.pipeline import Ranking
from crossmodal.search.rerank import find_reranker
from crossmodal.search.sparse import SHIPPED, SparseHeads, SparseIndex, SparseModel, find_sparse
from crossmodal.search.sparse_words import find_words
from crossmodal.sources.datasets import load_dataset

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"
SHARES = (0.0, 0.05, 0.1, 0.2, 0.3)


def rsum(encoder, emb: Embedded, bank, model: SparseModel | None, retriever: str) -> float:
    score = pipeline_scores(encoder, emb, Ranking(norm=True, rerank=0, retriever=retriever), bank, None,
                            sparse_heads=model)
    return evaluate_embeddings(emb.images, emb.texts, emb.data.text_image, score).metrics((1, 5, 10))["rsum"]


def split_table(encoder, bank, models: dict[str, SparseModel], emb: Embedded, split: str, sweep: bool) -> None:
    print(f"\n{split} ({len(emb.images)} photos, {len(emb.texts)} captions), normalisation on, no rerank")
    rows = {"dense": rsum(encoder, emb, bank, None, "dense"),
            "sparse (heads)": rsum(encoder, emb, bank, models["heads"], "sparse"),
            "sparse (words alone)": rsum(encoder, emb, bank, models["words"], "sparse"),
            "keyword": rsum(encoder, emb, bank, None, "keyword"),
            f"hybrid (words share {hybrid.SPARSE_WEIGHT})": rsum(encoder, emb, bank, models["words"], "hybrid")}
    if sweep:
        default = hybrid.SPARSE_WEIGHT
        for share in SHARES:
            hybrid.SPARSE_WEIGHT = share
            rows[f"hybrid, words share {share}"] = rsum(encoder, emb, bank, models["words"], "hybrid")
        hybrid.SPARSE_WEIGHT = default
    for label, value in rows.items():
        print(f"  {label:<28} RSUM {value:7.2f}  ({value - rows['dense']:+.2f} vs dense)")
    dense = emb.images.shape[1] * 4
    for label, heads in models.items():
        rows_by_kind = heads.dataset_rows(emb)
        for kind in ("image", "text"):
            rows_of = rows_by_kind[kind]
            index = SparseIndex(np.arange(rows_of.shape[0]), rows_of)
            per = index.nbytes() / len(index)
            print(f"  {label}: index bytes per {'photo' if kind == 'image' else 'caption'}: sparse {per:.0f} "
                  f"({index.rows.nnz / len(index):.1f} terms), dense float32 {dense} -> {100 * per / dense:.1f}%")


def million(rows: dict[str, sparse.csr_matrix], texts: np.ndarray, n: int = 1_000_000, queries: int = 100,
            seed: int = 0) -> None:
    """Query latency at ``n`` synthetic photo rows drawn like the dev photos' ``rows``: inverted index against
    exact dense search (``texts``: dev captions' dense vectors)."""
    rng = np.random.default_rng(seed)
    dev_rows = rows["image"]
    frequency = np.bincount(dev_rows.indices, minlength=dev_rows.shape[1]).astype(np.float64)
    per_row = int(round(dev_rows.nnz / dev_rows.shape[0]))
    # terms drawn by their dev frequency (a term drawn twice in a row counts once, with the summed weight)
    terms = rng.choice(len(frequency), size=(n, per_row), p=frequency / frequency.sum()).astype(np.int32)
    weights = rng.choice(dev_rows.data, size=n * per_row).astype(np.float32)
    synthetic = sparse.csr_matrix((weights, terms.reshape(-1), np.arange(0, n * per_row + 1, per_row)),
                                  shape=(n, dev_rows.shape[1]))
    index = SparseIndex(np.arange(n), synthetic)
    query_rows = rows["text"][:queries]
    vectors = rng.normal(size=(n, texts.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with threadpool_limits(1):
        started = time.perf_counter()
        for q in range(queries):
            index.search(query_rows[q], 10)
        sparse_ms = 1000 * (time.perf_counter() - started) / queries
        started = time.perf_counter()
        for q in range(min(queries, 20)):
            scores = vectors @ texts[q]
            np.argpartition(-scores, 10)[:10]
        dense_ms = 1000 * (time.perf_counter() - started) / min(queries, 20)
    print(f"\n{n:,} synthetic photo rows ({per_row} terms each, {index.nbytes() / 1e6:.0f} MB of postings; dense "
          f"{vectors.nbytes / 1e6:.0f} MB): sparse {sparse_ms:.1f} ms/query, exact dense {dense_ms:.1f} ms/query "
          f"(one thread) -> {dense_ms / sparse_ms:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite")
    parser.add_argument("--heads", type=Path, default=SHIPPED, help="Sparse heads on the dense vectors, compared.")
    parser.add_argument("--splits", nargs="+", default=["dev", "test"])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--million", action="store_true", help="Also time 1M synthetic rows.")
    args = parser.parse_args()
    encoder = load_encoder(args.model)
    reranker = find_reranker(encoder.fingerprint)
    heads = SparseHeads.load(args.heads) if args.heads.is_file() else find_sparse(encoder.fingerprint)
    words = find_words(reranker, lambda: encoder)
    if heads is None or heads.fingerprint != encoder.fingerprint or words is None:
        raise SystemExit(f"{args.model} needs sparse heads (--heads) and a reranker with a word classifier")
    models = {"heads": heads, "words": words}
    bank = find_bank(encoder.fingerprint)
    print(f"sparse models: {', '.join(f'{k} ({len(m.vocab)} words)' for k, m in models.items())}; hybrid: keyword "
          f"share {hybrid.WEIGHT}, sparse share {hybrid.SPARSE_WEIGHT}")
    first = None
    for i, split in enumerate(args.splits):
        emb = embed_dataset(encoder, load_dataset(args.dataset, split), progress=False, reranker=reranker)
        first = first or emb
        split_table(encoder, bank, models, emb, split, sweep=i == 0)
    if args.million:
        for name, model in models.items():
            print(f"\n{name}:", end=" ")
            million(model.dataset_rows(first), first.texts)


if __name__ == "__main__":
    main()
