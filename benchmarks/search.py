"""Search at scale: every index kind next to plain faiss.IndexFlatIP, on clustered normalised vectors.

    python benchmarks/search.py [--n 1000000] [--dim 512] [--kinds hnsw,ivfpq,binary,flat-fp16,flat-int8]

For each kind: build time, bytes per vector, recall@10 against exact search, single-query p50/p99
latency (one query at a time, through `VectorIndex.query`, rescoring included) and batched
queries/s, all on FAISS with 2 threads. The data is a fixed-seed mixture of Gaussian clusters (not
uniform noise, where every method looks alike), queries drawn from the same mixture but not in the base.
"""

from __future__ import annotations

import argparse
import gc
import time

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

from crossmodal.index import build_index
from crossmodal.index.planner import plan_index

KINDS = {
    "hnsw": ("hnsw", {"storage": "fp32"}),
    "hnsw-int8": ("hnsw", {"storage": "int8"}),
    "ivfpq": ("ivfpq", {"m": 64, "nprobe": 32, "rescore": 10}),
    "binary": ("binary", {"rescore": 20}),
    "flat-fp16": ("flat", {"storage": "fp16"}),
    "flat-int8": ("flat", {"storage": "int8"}),
}


def clustered(n: int, dim: int, clusters: int, seed: int, centers: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``clusters`` random centres (cluster sizes uneven, spread varied)."""
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = rng.normal(size=(clusters, dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(clusters, 2.0))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        which = rng.choice(clusters, size=m, p=weights)
        spread = rng.uniform(0.6, 1.2, size=(m, 1)).astype(np.float32) / np.sqrt(dim)
        block = centers[which] + spread * rng.standard_normal((m, dim), dtype=np.float32)
        out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, centers


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)]))


def latencies(search, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 milliseconds of one-query-at-a-time searches."""
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=300, help="queries timed one at a time per kind")
    parser.add_argument("--kinds", default="hnsw,ivfpq,binary,flat-fp16,flat-int8")
    parser.add_argument("--ef", default="32,64,96,128", help="HNSW ef_search values to sweep")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    console = Console()

    start = time.perf_counter()
    base, centers = clustered(args.n, args.dim, args.clusters, seed=0)
    queries, _ = clustered(args.queries, args.dim, args.clusters, seed=1, centers=centers)
    ids = np.arange(args.n, dtype=np.int64)
    lookup = base.__getitem__  # ids are rows here, as the collection maps ids to snapshot rows
    console.print(f"data: {args.n} x {args.dim} in {args.clusters} clusters ({time.perf_counter() - start:.0f} s)")

    rows = []
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(base)
    flat_build = time.perf_counter() - start
    start = time.perf_counter()
    _, truth = flat.search(queries, 10)
    flat_qps = len(queries) / (time.perf_counter() - start)
    flat_p50, flat_p99 = latencies(lambda q: flat.search(q, 10), queries[: min(args.single, 50)])
    rows.append(("faiss.IndexFlatIP (baseline)", "", flat_build, args.dim * 4, 1.0, flat_p50, flat_p99, flat_qps))
    flat.reset()  # free its 2 GB before the next kind
    gc.collect()
    console.print(f"baseline: {flat_qps:.1f} q/s batched, p50 {flat_p50:.1f} ms")

    default = plan_index(args.n, args.dim)
    console.print(f"planner default for {args.n} x {args.dim}: {default.kind} {default.params} ({default.reason})")
    for name in args.kinds.split(","):
        kind, params = KINDS[name]
        if kind == "ivfpq":
            params = {**params, "nlist": plan_index(args.n, args.dim, kind="ivfpq").params.get("nlist", 256)}
        if kind == "hnsw":
            params = {**params, "ef_search": default.params.get("ef_search", 64)}
        start = time.perf_counter()
        index = build_index(kind, ids, base, **params)
        build = time.perf_counter() - start
        efs = [int(e) for e in args.ef.split(",")] if kind == "hnsw" else [None]
        for ef in efs:
            if ef is not None:
                index.params["ef_search"] = ef
            start = time.perf_counter()
            _, found = index.query(queries, 10, lookup=lookup)
            qps = len(queries) / (time.perf_counter() - start)
            p50, p99 = latencies(lambda q, index=index: index.query(q, 10, lookup=lookup), queries[: args.single])
            label = name + (f" ef={ef}" if ef else "") + (" (planner default)" if kind == default.kind and
                                                          ef == default.params.get("ef_search") and
                                                          params.get("storage") == default.params.get("storage")
                                                          else "")
            rows.append((label, str({k: v for k, v in index.params.items() if k != "ef_search"}), build,
                         index.nbytes / index.ntotal, recall_at_10(found, truth), p50, p99, qps))
            console.print(f"{label}: recall@10 {rows[-1][4]:.3f}, p50 {p50:.2f} ms, {qps:.0f} q/s")
        index = None
        gc.collect()

    table = Table(title=f"{args.n:,} x {args.dim} clustered vectors, {args.queries} queries, "
                        f"{args.threads} threads, faiss {faiss.__version__}")
    for col in ("index", "params", "build s", "bytes/vector", "recall@10", "p50 ms", "p99 ms", "batched q/s",
                "x flat q/s"):
        table.add_column(col, justify="left" if col in ("index", "params") else "right")
    for label, params, build, bpv, rec, p50, p99, qps in rows:
        table.add_row(label, params, f"{build:.1f}", f"{bpv:.0f}", f"{rec:.3f}", f"{p50:.2f}", f"{p99:.2f}",
                      f"{qps:,.0f}", f"{qps / flat_qps:.1f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
