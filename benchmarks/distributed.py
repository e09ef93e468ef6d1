"""Scale-out on Ray, side by side in one run: photo indexing (local pipeline vs Ray encode actors), then search
over 1, 2 and 4 shards (benchmarks/shard_search.py).

    OMP_NUM_THREADS=1 python benchmarks/distributed.py [--only indexing|search] [--photos 400] [--repeats 3]
        [--items 1000000] [--work DIR]

The figures in docs/benchmarks.md come from one section at a time (``--only``) on a quiet machine: right after
the indexing section, the Ray processes it stopped still wind down and slow the first search figures.

Indexing: the same N photos (Flickr8k `dev` photos when ../shared/datasets/flickr8k is there, else synthetic
ones) indexed into a fresh collection of the default model by (1) the local pipeline with its defaults (decode
threads ahead of the model, which runs on every core), (2) Ray with one encode actor of one thread, (3) Ray with
two such actors, on a local Ray of as many CPUs. Each run stores the vectors, the normalisation bias and the
reranker's photo tokens; models are loaded and warmed before the clock starts (Ray's start and the actors' model
loads are shown apart). The setups take turns; prints photos/s and the ratio to the local pipeline (best of
``--repeats`` runs each) and the load average.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from crossmodal import Collection, load_encoder

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"


def photo_paths(n: int, folder: Path) -> tuple[list[Path], str]:
    """``n`` Flickr8k dev photos when the data set is here, else ``n`` synthetic 320x240 JPEGs in ``folder``."""
    if (FLICKR / "captions.tsv").is_file():
        from crossmodal.sources.datasets import load_flickr_layout

        return list(load_flickr_layout(FLICKR, "dev").images[:n]), "Flickr8k dev"
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"p{i:05}.jpg"
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths, "synthetic 320x240"


def _timed_run(folder: Path, model: str, paths: list[Path], pool: object | None) -> tuple[float, float]:
    """Seconds to index ``paths`` into a new collection (model loaded before the clock starts), and the CPU
    seconds this process spent on it (with a pool: what the process that writes the store costs)."""
    with Collection.open(folder, model) as c:
        c.encoder.encode_images([Image.open(paths[0]).convert("RGB")])  # warm the local model: not timed
        start, cpu = time.perf_counter(), time.process_time()
        report = c.add_images(paths, pool=pool)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert report.added + report.reused == len(paths), report.summary()
    return seconds, cpu


def indexing(n: int = 400, model: str = "lite", repeats: int = 3, configs: tuple[int, ...] = (1, 2)
             ) -> tuple[list[tuple[str, float, float, float, float]], str]:
    """Rows (setup, startup s, best seconds, photos/s, this process's CPU s in that run) of the local pipeline
    and of Ray with each count of one-thread encode actors in ``configs``, and where the photos came from. The
    setups take turns, ``repeats`` rounds, a fresh collection each run: a load that comes and goes hits them
    alike."""
    import ray

    from crossmodal.distributed import EncodePool

    with tempfile.TemporaryDirectory() as tmp:
        paths, source = photo_paths(n, Path(tmp) / "photos")
        warm = paths[: min(16, len(paths))]
        start = time.perf_counter()
        # Ray runs its workers at nice 15: here at the local pipeline's priority, or other work on the machine
        # would slow only them. One logical CPU per actor of all the pools (an idle pool's actors sleep).
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", num_cpus=sum(configs), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        up = [time.perf_counter() - start]
        pools = []
        try:
            for workers in configs:
                start = time.perf_counter()
                pools.append(EncodePool(model, workers))
                up.append(time.perf_counter() - start)
            setups: list[EncodePool | None] = [None, *pools]
            times: list[list[tuple[float, float]]] = [[] for _ in setups]
            for i, pool in enumerate(setups):  # first ONNX sessions, page cache: not timed
                _timed_run(Path(tmp) / f"warm-{i}", model, warm, pool)
            for r in range(repeats):
                for i, pool in enumerate(setups):
                    times[i].append(_timed_run(Path(tmp) / f"run-{r}-{i}", model, paths, pool))
        finally:
            for pool in pools:
                pool.close()
            ray.shutdown()
    names = ["local pipeline (defaults)", *(f"Ray, {w} actor{'s' if w > 1 else ''} x 1 thread" for w in configs)]
    startup = [0.0, up[0] + up[1], *up[2:]]
    best = [min(t) for t in times]
    return [(name, s, wall, n / wall, cpu) for name, s, (wall, cpu) in zip(names, startup, best, strict=True)], source


def print_indexing(rows: list[tuple[str, float, float, float, float]], n: int, source: str, load: float) -> None:
    """The indexing table: photos/s and the ratio to the local pipeline (the first row); ``load``: the load
    average before the run (others' work), beside the one after it (this run's own, mostly)."""
    import torch

    encoder = load_encoder("lite")
    threads = getattr(encoder, "threads", torch.get_num_threads())
    table = Table(title=f"indexing {n} {source} photos, lite ({type(encoder).__name__}), {os.cpu_count()} cores; "
                        f"local: model on {threads} threads + decode threads; load average {load:.2f} before, "
                        f"{os.getloadavg()[0]:.2f} after")
    for col in ("setup", "startup s", "index s", "photos/s", "x local", "main process CPU s"):
        table.add_column(col, justify="left" if col == "setup" else "right")
    local = rows[0][3]
    for name, up, seconds, rate, cpu in rows:
        table.add_row(name, f"{up:.1f}" if up else "-", f"{seconds:.2f}", f"{rate:.1f}", f"{rate / local:.3f}",
                      f"{cpu:.2f}")
    Console(width=140).print(table)


def main() -> None:
    """Run the chosen benchmark sections and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("indexing", "search"), default=None, help="run one section only")
    parser.add_argument("--photos", type=int, default=400, help="photos indexed by each setup")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each setup (the best counts)")
    parser.add_argument("--items", type=int, default=1_000_000, help="synthetic items of the shard search section")
    parser.add_argument("--work", type=Path, default=None, help="keep the shard search's collections here (and "
                        "measure those an earlier run built)")
    args = parser.parse_args()
    if args.only in (None, "indexing"):
        load = os.getloadavg()[0]
        rows, source = indexing(args.photos, repeats=args.repeats)
        print_indexing(rows, args.photos, source, load)
    if args.only in (None, "search"):
        from shard_search import table as shard_table

        with tempfile.TemporaryDirectory() as temporary:
            work = args.work or Path(temporary)
            work.mkdir(parents=True, exist_ok=True)
            Console(width=200).print(shard_table(args.items, 512, 300, ray=True, work=work))


if __name__ == "__main__":
    main()
