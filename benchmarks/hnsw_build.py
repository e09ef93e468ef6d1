"""HNSW build settings compared on the same clustered vectors: links per node (M), build effort
(efConstruction) and the batch size vectors are added in, each through the index code collections use.

    python benchmarks/hnsw_build.py [--n 100000] [--dim 512] [--threads 2]

For each setting: build time, graph bytes per item (links and levels, vectors not counted: a collection's
graph searches its vector file), the ef_search calibrated for recall@10 >= 0.95 (as `index` calibrates it)
and, at that ef, recall@10 against exact search and single-query p50 over 200 held-out queries.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import _vectors  # noqa: E402 - the synthetic vectors of the scale benchmark

from crossmodal.index import add_in_batches, make_index  # noqa: E402
from crossmodal.index.calibrate import calibrate_ef  # noqa: E402
from crossmodal.search.exact import topk  # noqa: E402

SETTINGS = [  # (M, efConstruction, batch)
    (32, 80, 20_000), (32, 40, 20_000), (32, 160, 20_000), (16, 80, 20_000), (48, 80, 20_000),
    (32, 80, 2_000), (32, 80, 1_000_000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    vectors = np.hstack([_vectors(args.n, args.dim, seed=1), np.zeros((args.n, 1), np.float32)])
    queries = np.hstack([_vectors(200, args.dim, seed=9), np.zeros((200, 1), np.float32)])
    ids = np.arange(args.n)
    _, truth = topk(vectors, queries, 10)
    table = Table(title=f"HNSW build settings ({args.n:,} x {args.dim}, {args.threads} threads)")
    for col in ("M", "efConstruction", "batch", "build (s)", "graph B/item", "ef for 0.95", "recall@10",
                "p50 (ms)"):
        table.add_column(col, justify="right")
    for m, ef_construction, batch in SETTINGS:
        index = make_index("hnsw", args.dim + 1, m=m, ef_construction=ef_construction)
        index.reserve(args.n)
        start = time.perf_counter()
        add_in_batches(index, ids, vectors, batch=batch)
        built = time.perf_counter() - start
        hnsw = index.index.hnsw
        graph = hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
        ef, _ = calibrate_ef(index, ids, vectors, 0.95, args.dim)
        index.params["ef_search"] = ef
        faiss.omp_set_num_threads(1)
        times, found = [], []
        for q in queries:
            s = time.perf_counter()
            found.append(index.search(q[None], 10)[1][0])
            times.append(time.perf_counter() - s)
        faiss.omp_set_num_threads(args.threads)
        recall = np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)])
        table.add_row(str(m), str(ef_construction), f"{min(batch, args.n):,}", f"{built:.1f}",
                      f"{graph / args.n:.0f}", str(ef), f"{recall:.3f}", f"{np.median(times) * 1e3:.3f}")
        print(f"M {m}, efConstruction {ef_construction}, batch {batch}: built in {built:.1f} s", file=sys.stderr)
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
