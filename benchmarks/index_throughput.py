"""Indexing throughput of the default model on the Flickr8k `dev` photos: decode + encode + write.

    python benchmarks/index_throughput.py [--data ../shared/datasets/flickr8k] [--split dev] [--model lite]

Prints one table: the full `index` run (photos/s) with and without what the ranking pipeline stores per
photo (normalisation bias, reranker tokens), the same run with another model (`--also lite+mirror`, alternating with
the others), its parts measured alone (decode, encode), and a second run over the unchanged folder (what
re-indexing costs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from crossmodal import Collection, load_encoder
from crossmodal.sources.datasets import load_flickr_layout
from crossmodal.sources.images import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/flickr8k"))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--model", default="lite")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos")
    parser.add_argument("--repeats", type=int, default=2, help="index runs of each kind (the best counts)")
    parser.add_argument("--also", default=None, help="another model to index with, side by side (e.g. lite+mirror)")
    args = parser.parse_args()

    paths = load_flickr_layout(args.data, args.split).images[: args.limit]
    encoder = load_encoder(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for p in paths:
            (folder / p.name).symlink_to(p)
        encoder.encode_images([load_image(paths[0])])  # warm-up, not timed

        start = time.perf_counter()
        images = [load_image(p) for p in paths]
        decode = time.perf_counter() - start

        start = time.perf_counter()
        vectors = encoder.encode_images(images)
        encode = time.perf_counter() - start

        other = load_encoder(args.also) if args.also else None
        plain, full, also = [], [], []
        runs = [(encoder, False, plain), (encoder, True, full)] + ([(other, True, also)] if other else [])
        for run in range(args.repeats):  # alternating, best of each: the bias and reranker tokens side by side
            for model, with_extras, times in runs:
                c = Collection.open(Path(tmp) / f"col-{run}-{with_extras}-{model.name}", model=model)
                if not with_extras:
                    c.store.bank, c.store.reranker = None, None
                start = time.perf_counter()
                report = c.index_folder(folder, progress=False)
                times.append(time.perf_counter() - start)
                assert report.added == len(paths), report.summary()
        plain, full = min(plain), min(full)

        start = time.perf_counter()
        c.index_folder(folder, progress=False)
        again = time.perf_counter() - start

        start = time.perf_counter()
        ids, matrix = c.store.matrix("image")
        snapshot = time.perf_counter() - start
        assert len(ids) == len(matrix) == len(vectors)
        n = len(paths)
        rows = [
            ("index (decode + encode + write), dual vectors only", plain, n / plain),
            ("index with normalisation bias and reranker tokens (default)", full, n / full),
            *([(f"  the same with {args.also}", min(also), n / min(also))] if also else []),
            ("  decode only", decode, n / decode),
            ("  encode only", encode, n / encode),
            ("re-index, nothing changed", again, n / again),
            ("build search snapshot", snapshot, n / snapshot),
        ]
    table = Table(title=f"{encoder.name} on {n} Flickr8k {args.split} photos, torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads")
    for col in ("step", "seconds", "photos/s"):
        table.add_column(col, justify="right" if col != "step" else "left")
    for name, seconds, rate in rows:
        table.add_row(name, f"{seconds:.2f}", f"{rate:,.1f}")
    Console().print(table)
    print(f"default / dual-only indexing throughput: {plain / full:.3f}x")
    if also:
        print(f"{args.also} / default indexing throughput: {full / min(also):.3f}x")


if __name__ == "__main__":
    main()
