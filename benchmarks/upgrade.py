"""`crossmodal upgrade` against indexing afresh: the time, and whether the upgraded collection answers as a new one.

    python benchmarks/upgrade.py --old-model runs/lite-v4 [--split dev] [--captions 1000] [--queries 200]

Indexes the split's photos and some of its captions with ``--old-model`` (e.g. the previous lite, kept as a model
folder), then, timed one after the other, upgrades that collection to the current lite (`Collection.upgrade`) and
indexes the same photos and captions afresh with it. Prints both times and how the two collections answer through
the default pipeline, the split's other captions ranking photos and the first photos ranking the stored captions:
how many queries get the same top 10 in the same order, and the largest score difference. Photos are encoded
alike either way; a stored caption's vector depends a little on the captions it was encoded with (the
multilingual tower's int8 products quantise each batch's activations together), so the photo queries show that.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from crossmodal.collection.collection import Collection
from crossmodal.sources.datasets import load_dataset

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"


def build(folder: Path, model: str, photos: Path, captions: list[str]) -> float:
    """Index ``photos`` and ``captions`` into a new collection with ``model``; seconds taken."""
    start = time.perf_counter()
    with Collection.open(folder, model=model) as c:
        c.index_folder(photos, progress=False)
        c.add_texts(captions)
    return time.perf_counter() - start


def answers(folder: Path, texts: list[str], photos: list[Path]) -> tuple[list[list[tuple[str, float]]], ...]:
    """Each query's top 10 as (path or text, score): the texts ranking photos, then the photos ranking captions."""
    with Collection.open(folder) as c:
        found = [c.search(t, k=10) for t in texts], [c.search(image=p, kind="text", k=10) for p in photos]
    return tuple([[(h.path or h.text or "", h.score) for h in hits] for hits in part] for part in found)


def agreement(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]]) -> str:
    """How many queries' top 10 agree (same items, same order), and the largest score difference."""
    same = sum([x for x, _ in p] == [x for x, _ in q] for p, q in zip(a, b, strict=True))
    gap = max(abs(x[1] - y[1]) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=False))
    return f"{same} of {len(a)} with the same top 10, largest score difference {gap:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-model", required=True, help="the model the collection is first indexed with")
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--captions", type=int, default=1000, help="captions stored in the collection")
    parser.add_argument("--queries", type=int, default=200, help="caption queries, and as many photo queries")
    args = parser.parse_args()
    data = load_dataset(args.dataset, args.split)
    root = Path(tempfile.mkdtemp(prefix="upgrade-bench-"))
    try:
        photos = root / "photos"
        photos.mkdir()
        for p in data.images:
            (photos / Path(p).name).symlink_to(Path(p).resolve())
        stored, asked = list(data.texts[:args.captions]), list(data.texts[args.captions:args.captions + args.queries])
        old_s = build(root / "upgraded", args.old_model, photos, stored)
        start = time.perf_counter()
        with Collection.open(root / "upgraded") as c:
            report = c.upgrade("lite", progress=False)
        upgrade_s = time.perf_counter() - start
        fresh_s = build(root / "fresh", "lite", photos, stored)
        queried = sorted(photos.iterdir())[:args.queries]
        upgraded, fresh = answers(root / "upgraded", asked, queried), answers(root / "fresh", asked, queried)
        print(f"{len(data.images)} photos and {len(stored)} captions ({args.split}); 2 cores\n")
        print("| step | seconds | x indexing afresh |\n|---|---|---|")
        print(f"| index with {args.old_model} | {old_s:.1f} | {old_s / fresh_s:.2f} |")
        print(f"| **upgrade to lite** ({report.encoded.get('image', 0)} photos, {report.encoded.get('text', 0)} "
              f"captions encoded again) | **{upgrade_s:.1f}** | **{upgrade_s / fresh_s:.2f}** |")
        print(f"| index afresh with lite | {fresh_s:.1f} | 1.00 |")
        print(f"\nupgraded vs indexed afresh: captions ranking photos {agreement(upgraded[0], fresh[0])}; photos "
              f"ranking the stored captions {agreement(upgraded[1], fresh[1])}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
