"""Search over shards: the same N synthetic items (scale.py's clustered vectors and fake paths) in one collection
and in 1, 2 and 4 shards, each index built as `crossmodal index` builds it; then, in this one process, for each:
warm p50/p99 of one query at a time, batched throughput, recall@10 against exact search over all N items, and
bytes on disk; the shard rows' ratio to the one collection is the fan-out and merge overhead. With ``--ray`` the
2-shard collection is also served by Ray actors (one per shard, one CPU each) and measured the same way.

    python benchmarks/shard_search.py [--n 1000000] [--dim 512] [--queries 300] [--ray]

(``benchmarks/distributed.py`` prints this table after its indexing one.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import BATCH, _vectors  # noqa: E402 - the 1M benchmark's data and measures

from crossmodal import Collection  # noqa: E402
from crossmodal.collection.manifest import Manifest  # noqa: E402
from crossmodal.collection.sharded import FORMAT, SHARDS_FILE, shard_folders, shard_of  # noqa: E402
from crossmodal.collection.store import NewItem  # noqa: E402
from crossmodal.search.exact import topk  # noqa: E402
from crossmodal.search.pipeline import Query  # noqa: E402

WARM_UP_S = 3.0
BATCHED = 32  # queries per call for the throughput figure


def path_of(i: int) -> str:
    return f"/photos/{i // 1000:04d}/{i:07d}.jpg"


def build(folder: Path, shards: int, vectors: np.ndarray) -> float:
    """Store the items into ``shards`` shards (0: a plain collection) and build their indexes; seconds taken."""
    started = time.perf_counter()
    folders = [folder] if shards == 0 else shard_folders(folder, shards)
    for f in folders:
        f.mkdir(parents=True)
        Manifest(model="synthetic", fingerprint="synthetic", dim=vectors.shape[1]).write(f)
    if shards:
        (folder / SHARDS_FILE).write_text(json.dumps({"format": FORMAT, "shards": shards}))
    owner = np.zeros(len(vectors), np.int64) if shards == 0 else np.array(
        [shard_of(path_of(i), shards) for i in range(len(vectors))])
    for s, f in enumerate(folders):
        with Collection(f, Manifest.read(f)) as c:
            mine = np.flatnonzero(owner == s)
            for b in range(0, len(mine), BATCH):
                with c.store.transaction() as db:
                    for i in mine[b:b + BATCH]:
                        c.store.put(db, NewItem("image", vectors[i], hash=f"h{i}", path=path_of(int(i)),
                                                size=100_000 + int(i), mtime=1.7e9))
            c.refresh_indexes()  # what `crossmodal index` does at its end
    return time.perf_counter() - started


def measure(c: Any, queries: np.ndarray, truth: list[set[str]]) -> dict[str, float]:
    """Warm single-query latency, batched throughput and recall@10 of one open collection."""
    warm_until = time.perf_counter() + WARM_UP_S
    while time.perf_counter() < warm_until:
        c.search_vector(queries[0], k=10, modality="text")
    times, found = [], []
    for q in queries:
        s = time.perf_counter()
        hits = c.search_vector(q, k=10, modality="text")
        times.append(time.perf_counter() - s)
        found.append({h.path for h in hits})
    s = time.perf_counter()
    for b in range(0, len(queries), BATCHED):
        c.search_queries([Query(q, "text") for q in queries[b:b + BATCHED]], k=10)
    qps = len(queries) / (time.perf_counter() - s)
    return {"p50_ms": float(np.percentile(times, 50) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3),
            "qps": qps, "recall": float(np.mean([len(f & t) / 10 for f, t in zip(found, truth, strict=True)]))}


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def table(n: int, dim: int, n_queries: int, ray: bool, work: Path, build_only: bool = False) -> Table | None:
    """Build and measure every layout; the table of figures."""
    vectors = _vectors(n, dim, seed=1)
    queries = _vectors(n_queries, dim, seed=9)
    _, rows = topk(vectors, queries, 10)
    truth = [{path_of(int(i)) for i in r} for r in rows]
    layouts: list[tuple[str, Path, int]] = [("one collection", work / "one", 0), ("1 shard", work / "s1", 1),
                                            ("2 shards", work / "s2", 2), ("4 shards", work / "s4", 4)]
    figures: dict[str, dict[str, float]] = {}
    for name, folder, shards in layouts:
        done = folder / "built.json"  # a layout built by an earlier run with --work: measured again, not rebuilt
        if done.is_file():
            built = json.loads(done.read_text())["build_s"]
        elif shards == 1:  # the one collection as the single shard of a sharded one: no second build
            folder.mkdir()
            (folder / SHARDS_FILE).write_text(json.dumps({"format": FORMAT, "shards": 1}))
            os.symlink(work / "one", shard_folders(folder, 1)[0])
            built = 0.0
        else:
            built = build(folder, shards, vectors)
            print(f"{name}: built in {built:.0f} s", flush=True)
        done.write_text(json.dumps({"build_s": built, "n": n}))
        if build_only:
            continue
        with Collection.open(folder, create=False) as c:
            figures[name] = {"build_s": built, "bytes": disk_bytes(work / "one" if shards == 1 else folder) / n,
                             **measure(c, queries, truth)}
    if ray:
        from crossmodal.distributed.shards import open_on_ray

        c = open_on_ray(work / "s2")
        figures["2 shards on Ray"] = {"build_s": 0.0, "bytes": figures["2 shards"]["bytes"],
                                      **measure(c, queries, truth)}
        c.close()
    if build_only:
        return None
    base = figures["one collection"]
    out = Table(title=f"search over shards: {n:,} synthetic items, {dim}-d, {n_queries} queries, k=10 "
                      f"(this process, {os.cpu_count()} cores)")
    for col in ("layout", "build s", "bytes/item", "p50 ms", "p99 ms", "x p50", "batched q/s", "x q/s",
                "recall@10"):
        out.add_column(col, justify="left" if col == "layout" else "right")
    for name, f in figures.items():
        out.add_row(name, f"{f['build_s']:.0f}" if f["build_s"] else "-", f"{f['bytes']:,.0f}", f"{f['p50_ms']:.2f}",
                    f"{f['p99_ms']:.2f}", f"{f['p50_ms'] / base['p50_ms']:.2f}x", f"{f['qps']:,.0f}",
                    f"{f['qps'] / base['qps']:.2f}x", f"{f['recall']:.3f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--ray", action="store_true", help="also serve the 2 shards from Ray actors")
    parser.add_argument("--work", type=Path, default=None, help="keep the collections in this folder, and measure "
                        "the ones an earlier run built there (default: a temporary folder)")
    parser.add_argument("--build-only", action="store_true", help="build the layouts into --work, measure nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        out = table(args.n, args.dim, args.queries, args.ray, work, args.build_only)
        if out is not None:
            Console(width=200).print(out)


if __name__ == "__main__":
    main()
