"""Index builds side by side: FAISS HNSW (what the planner builds), hnswlib (if installed: `pip install hnswlib`),
and FAISS IVF with an HNSW coarse quantizer (IVF-HNSW, flat lists), on the same N synthetic 512-d vectors
(scale.py's clustered ones) and 300 held-out queries, in one process on every core. For each: build seconds
and the smallest ef (nprobe for IVF) of a sweep that reaches recall@10 >= 0.95 against exact search, with its
single-query p50 (one thread).

    python benchmarks/graph_libraries.py [--n 200000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import _vectors  # noqa: E402

M, EF_CONSTRUCTION = 32, 80  # the planner's HNSW settings
SWEEP = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # ef_search
PROBES = (1, 2, 4, 8, 16, 32, 64, 128)  # nprobe
TARGET = 0.95


def sweep(search: Callable[[np.ndarray, int], np.ndarray], set_ef: Callable[[int], None], queries: np.ndarray,
          truth: np.ndarray, values: tuple[int, ...] = SWEEP) -> tuple[int, float, float]:
    """(ef, recall@10, p50 ms) at the smallest ef of the sweep reaching the target (else the largest)."""
    for ef in values:
        set_ef(ef)
        times, found = [], []
        for q in queries:
            started = time.perf_counter()
            found.append(search(q[None], 10)[0])
            times.append(time.perf_counter() - started)
        recall = float(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)]))
        if recall >= TARGET or ef == values[-1]:
            return ef, recall, float(np.percentile(times, 50) * 1e3)
    raise AssertionError("unreachable")


def faiss_hnsw(x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> tuple[float, tuple[int, float, float]]:
    index = faiss.IndexHNSWFlat(x.shape[1], M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    started = time.perf_counter()
    index.add(x)
    built = time.perf_counter() - started
    faiss.omp_set_num_threads(1)  # single queries, one thread, as hnswlib's below
    return built, sweep(lambda q, k: index.search(q, k)[1], lambda ef: setattr(index.hnsw, "efSearch", ef), queries,
                        truth)


def hnswlib_graph(x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> tuple[float, tuple[int, float, float]]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=M, ef_construction=EF_CONSTRUCTION)
    index.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    index.add_items(x, np.arange(len(x)))
    built = time.perf_counter() - started
    index.set_num_threads(1)
    return built, sweep(lambda q, k: index.knn_query(q, k)[0], index.set_ef, queries, truth)


def ivf_hnsw(x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> tuple[float, tuple[int, float, float]]:
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    lists = int(4 * np.sqrt(len(x)))
    quantizer = faiss.IndexHNSWFlat(x.shape[1], M, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
    started = time.perf_counter()
    index.train(x[np.random.default_rng(0).choice(len(x), min(len(x), 50 * lists), replace=False)])
    index.add(x)
    built = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    return built, sweep(lambda q, k: index.search(q, k)[1], lambda ef: setattr(index, "nprobe", ef), queries, truth,
                        PROBES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    x = _vectors(args.n, 512, seed=1)
    queries = _vectors(300, 512, seed=9)
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    rows = []
    for name, build in (("FAISS HNSW (planner)", faiss_hnsw), ("hnswlib", hnswlib_graph),
                        ("FAISS IVF-HNSW (flat lists)", ivf_hnsw)):
        try:
            built, (ef, recall, p50) = build(x, queries, truth)
            rows.append((name, built, ef, recall, p50))
        except ImportError as e:
            print(f"{name}: skipped ({e})")
    table = Table(title=f"index builds: {args.n:,} x 512 clustered vectors, M {M}, efConstruction {EF_CONSTRUCTION}, "
                        f"{os.cpu_count()} cores; recall target {TARGET}")
    for col in ("library", "build s", "x FAISS", "ef / nprobe", "recall@10", "p50 ms"):
        table.add_column(col, justify="left" if col == "library" else "right")
    base = rows[0][1]
    for name, built, ef, recall, p50 in rows:
        table.add_row(name, f"{built:.1f}", f"{built / base:.2f}x", str(ef), f"{recall:.3f}", f"{p50:.2f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
