"""A collection at scale, through the API `crossmodal index` uses: synthetic items (fake paths, clustered
unit vectors, fixed seed) stored in batches of one transaction each, then the index built as `index` ends.

    python benchmarks/scale.py [--sizes 100000,1000000] [--dim 512] [--queries 200]

Prints, side by side for each size: insert rate, the index build at the end of `index`, bytes per item
on disk by file (and their total against the raw float32 vector plus the metadata, items.sqlite), peak
RSS of each phase (each runs in its own process: the insert, the build), the first search after `index`
(a fresh process: open + one search), warm p50/p99, the next search after 1% churn (1% deleted, 1%
added), a cold `crossmodal search` (fresh processes, the collection marked as lite's: its vectors are 512-d
like lite's), and recall@10 of the planned kind against exact search. "Warm" is after 5 s of warm-up searches;
then the same queries at each ef_search of EF_SWEEP (p50 and recall@10 against exact), and the share of a
warm search spent in the graph search itself.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import clustered  # noqa: E402 - the same clustered vectors as benchmarks/search.py

from crossmodal import Collection  # noqa: E402
from crossmodal.collection.indexes import CatchingUp  # noqa: E402
from crossmodal.collection.manifest import Manifest  # noqa: E402
from crossmodal.collection.store import NewItem  # noqa: E402
from crossmodal.search.exact import topk  # noqa: E402

BATCH = 1000  # items per transaction, as an index run writes them
CLUSTERS = 200
EF_SWEEP = (16, 24, 32, 48, 64, 96, 128)
WARM_UP_S = 5.0  # searches before the warm figures (a mapped index is read whole 1 s after opening)


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(12345)
    centers = rng.normal(size=(CLUSTERS, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    return clustered(n, dim, CLUSTERS, seed, centers)[0]


def insert(folder: Path, start: int, n: int, dim: int, seed: int) -> None:
    """Store ``n`` synthetic photos (ids after ``start``) the way an index run does: one transaction per batch."""
    with Collection(folder, Manifest.read(folder)) as c:
        vectors = _vectors(n, dim, seed)
        for b in range(0, n, BATCH):
            with c.store.transaction() as db:
                for i in range(b, min(b + BATCH, n)):
                    c.store.put(db, NewItem("image", vectors[i], hash=f"h{start + i}",
                                            path=f"/photos/{(start + i) // 1000:04d}/{start + i:07d}.jpg",
                                            size=100_000 + i, mtime=1.7e9))


def phase(args: argparse.Namespace) -> dict:
    """One measured phase, in this (child) process; returns its figures with peak RSS."""
    folder = Path(args.folder)
    out: dict = {}
    t0 = time.perf_counter()
    if args.phase == "insert":
        Manifest(model="synthetic", fingerprint="synthetic", dim=args.dim).write(folder)
        insert(folder, 0, args.n, args.dim, seed=1)
        out["insert_s"] = time.perf_counter() - t0
    elif args.phase == "build":
        with Collection(folder, Manifest.read(folder)) as c:
            c.refresh_indexes()  # what `crossmodal index` does at its end
            out["plan"] = c.manifest.index["image"]["kind"]
        out["build_s"] = time.perf_counter() - t0
    elif args.phase == "first":
        with Collection(folder, Manifest.read(folder)) as c:
            q = _vectors(1, args.dim, seed=7)[0]
            c.search_vector(q, k=10, modality="text")
        out["search_s"] = time.perf_counter() - t0
    elif args.phase == "warm":
        with Collection(folder, Manifest.read(folder)) as c:
            queries = _vectors(args.queries, args.dim, seed=9)
            warm_until = time.perf_counter() + WARM_UP_S  # a running server's state: the index read whole
            while time.perf_counter() < warm_until:
                c.search_vector(queries[0], k=10, modality="text")
                time.sleep(0.05)
            times, found = searches(c, queries)
            ids, vectors = c.store.matrix("image")
            _, rows = topk(vectors, queries, 10)
            truth = ids[rows]
            out["p50_ms"] = float(np.percentile(times, 50) * 1e3)
            out["p99_ms"] = float(np.percentile(times, 99) * 1e3)
            out["recall"] = recall(found, truth)
            index = c.indexes.get("image", lag=True)
            if index is not None and index.kind == "hnsw":
                out["ef"] = index.params["ef_search"]
                graph = index.index if isinstance(index, CatchingUp) else index  # a lagging index answers through it
                aug = np.hstack([queries, np.zeros((len(queries), 1), np.float32)])
                alone = []
                for q in aug:
                    s = time.perf_counter()
                    graph.search(q[None], 10)
                    alone.append(time.perf_counter() - s)
                out["graph_p50_ms"] = float(np.percentile(alone, 50) * 1e3)
                chosen, out["sweep"] = index.params["ef_search"], {}
                for ef in EF_SWEEP:
                    index.params["ef_search"] = ef
                    times, found = searches(c, queries)
                    out["sweep"][ef] = (float(np.percentile(times, 50) * 1e3), recall(found, truth))
                index.params["ef_search"] = chosen
    elif args.phase == "churn":
        with Collection(folder, Manifest.read(folder)) as c:
            c.search_vector(_vectors(1, args.dim, seed=7)[0], k=10, modality="text")
            gone = c.store.ids_where("kind = 'image' ORDER BY random() LIMIT ?", (args.n // 100,))
            c.remove(gone)
        insert(folder, args.n, args.n // 100, args.dim, seed=3)
        with Collection(folder, Manifest.read(folder)) as c:
            s = time.perf_counter()
            c.search_vector(_vectors(1, args.dim, seed=8)[0], k=10, modality="text")
            out["search_s"] = time.perf_counter() - s
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def searches(c: Collection, queries: np.ndarray) -> tuple[list[float], list[list[int]]]:
    """(seconds, ids found) of a search for each query, one at a time."""
    times, found = [], []
    for q in queries:
        s = time.perf_counter()
        hits = c.search_vector(q, k=10, modality="text")
        times.append(time.perf_counter() - s)
        found.append([h.id for h in hits])
    return times, found


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)]))


def run_phase(folder: Path, name: str, n: int, dim: int, queries: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--phase", name, "--folder", str(folder), "--n", str(n),
                             "--dim", str(dim), "--queries", str(queries)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"phase {name} failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def disk(folder: Path, n: int) -> dict[str, float]:
    """Bytes per item on disk by file (an index's generation folder named by its kind), SQLite's WAL and
    shared-memory files counted with the database."""
    out: dict[str, float] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            parts = list(path.relative_to(folder).parts)
            if parts[0] == "index" and len(parts) == 3:
                parts[1] = parts[1].split(".")[0]
            name = "/".join(parts).removesuffix("-wal").removesuffix("-shm")
            out[name] = out.get(name, 0.0) + path.stat().st_size / n
    return out


def cold_cli(folder: Path, runs: int = 5) -> list[float]:
    """Wall seconds of `crossmodal search` in fresh processes, as a user types it, with the collection marked as
    the default model's (its synthetic vectors are 512-d, as lite's are): what a first query costs at this size."""
    from crossmodal.encoders import load_encoder

    manifest, lite = Manifest.read(folder), load_encoder("lite", multilingual=False)
    manifest.model, manifest.fingerprint = lite.name, lite.fingerprint
    manifest.write(folder)
    command = [str(Path(sys.executable).with_name("crossmodal")), "search", "a dog running on a beach", "-c",
               str(folder), "-k", "10"]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    columns: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        for n in sizes:
            folder = Path(tmp) / f"c{n}"
            folder.mkdir()
            inserted = run_phase(folder, "insert", n, args.dim, args.queries)
            created = run_phase(folder, "build", n, args.dim, args.queries)
            by_file = disk(folder, n)
            total = sum(by_file.values())
            baseline = args.dim * 4 + by_file.get("items.sqlite", 0.0)
            first = run_phase(folder, "first", n, args.dim, args.queries)
            warm = run_phase(folder, "warm", n, args.dim, args.queries)
            churn = run_phase(folder, "churn", n, args.dim, args.queries)
            cli = cold_cli(folder) if args.dim == 512 else [float("nan")]
            columns[n] = {
                "planned kind": created["plan"],
                "insert rate (items/s)": f"{n / inserted['insert_s']:,.0f}",
                "peak RSS of the insert (MB)": f"{inserted['rss_mb']:,.0f}",
                "index build at the end of `index` (s)": f"{created['build_s']:.1f}",
                "peak RSS of the build (MB)": f"{created['rss_mb']:,.0f}",
                **{f"bytes/item: {name}": f"{size:,.1f}" for name, size in sorted(by_file.items()) if size >= 0.05},
                "bytes/item: total": f"{total:,.0f}",
                "raw vector + metadata (items.sqlite) bytes/item": f"{baseline:,.0f}",
                "total / (raw vector + metadata)": f"{total / baseline:.2f}x",
                "first search after `index`, fresh process (s)": f"{first['search_s']:.2f}",
                "peak RSS of first search (MB)": f"{first['rss_mb']:,.0f}",
                "warm p50 / p99 (ms)": f"{warm['p50_ms']:.2f} / {warm['p99_ms']:.2f}",
                "recall@10 vs exact": f"{warm['recall']:.3f}",
                "calibrated ef_search; graph search alone p50 (ms)": f"{warm.get('ef', '')}; "
                                                                     f"{warm.get('graph_p50_ms', 0):.2f}",
                **{f"ef {ef}: p50 (ms) / recall@10": f"{p50:.2f} / {r:.3f}"
                   for ef, (p50, r) in warm.get("sweep", {}).items()},
                "next search after 1% churn (s)": f"{churn['search_s']:.2f}",
                "cold `crossmodal search` (lite queries), median / min of 5 (s)": f"{np.median(cli):.2f} / "
                                                                                   f"{min(cli):.2f}",
            }
    table = Table(title=f"A collection at scale ({args.dim}-d synthetic vectors, 2 cores)")
    table.add_column("")
    for n in sizes:
        table.add_column(f"{n:,}", justify="right")
    for key in dict.fromkeys(k for col in columns.values() for k in col):
        table.add_row(key, *(columns[n].get(key, "") for n in sizes))
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
