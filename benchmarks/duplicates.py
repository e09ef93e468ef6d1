"""Near-duplicate detection (`crossmodal duplicates`): precision and recall on Flickr8k dev photos with
synthetic near-copies mixed in, the threshold chosen on one half and measured on the other, and the time
to group the photos of a collection of 8,000.

    python benchmarks/duplicates.py [--dataset ../shared/datasets/flickr8k] [--timing-photos 8000]

The 1,000 dev photos are shuffled (fixed seed) into a tuning half and a test half. In each half, every
other photo gets one to three copies, each one of: a crop (70-90% of the area, anywhere in the frame), a
JPEG re-encode (quality 30-70), a resize (50-90% of the side), or all three (the photos are 224 px: a
resize to half is already a 112 px thumbnail). Each half is its own
collection, indexed with the default model, and grouped by `find_duplicates` (what the command runs) at
every threshold of a grid. A pair of photos counts as found when they land in one group; it is true
when both come from one original. The threshold with the best F1 on the tuning half is reported with
the test half's precision and recall, and the test half's recall per kind of copy.

The timing collection holds the first ``--timing-photos`` Flickr8k photos (all splits, real vectors of
the default model); the encoding time is reported apart from the grouping time. Collections are kept in
``--work`` so that a second run only groups.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from crossmodal import Collection
from crossmodal.collection.duplicates import (
    DEFAULT_THRESHOLD,
    copy_groups,
    find_duplicates,
    same_content,
    similar_pairs,
)
from crossmodal.search.pipeline import Ranking

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("crop", "re-encode", "resize", "all three")
GRID = [round(t, 3) for t in np.arange(0.60, 0.98, 0.02)] + [0.98, 0.99]


def copy_of(image: Image.Image, kind: str, rng: random.Random) -> bytes:
    """JPEG bytes of a synthetic near-copy of ``image``."""
    w, h = image.size
    out = image
    if kind in ("crop", "all three"):
        side = rng.uniform(0.70, 0.90) ** 0.5
        cw, ch = int(w * side), int(h * side)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out = out.crop((x, y, x + cw, y + ch))
    if kind in ("resize", "all three"):
        scale = rng.uniform(0.50, 0.90)
        out = out.resize((max(1, int(out.width * scale)), max(1, int(out.height * scale))), Image.LANCZOS)
    quality = rng.randint(30, 70) if kind in ("re-encode", "all three") else 95
    data = io.BytesIO()
    out.save(data, format="JPEG", quality=quality)
    return data.getvalue()


def make_half(names: list[str], images: Path, folder: Path, rng: random.Random) -> dict[str, tuple[str, str]]:
    """Write one half's photos and copies into ``folder``: file name -> (original, kind of copy or "")."""
    truth = {}
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        data = (images / name).read_bytes()
        write(folder / name, data)
        truth[name] = (name, "")
        if i % 2:
            continue
        with Image.open(io.BytesIO(data)) as im:
            image = im.convert("RGB")
        for j, kind in enumerate(rng.sample(KINDS, rng.randint(1, 3))):
            copy = f"{Path(name).stem}-copy{j}.jpg"
            write(folder / copy, copy_of(image, kind, rng))
            truth[copy] = (name, kind)
    return truth


def write(path: Path, data: bytes) -> None:
    """Write a photo unless a run before wrote it (same seed, same bytes): its vector is kept."""
    if not path.exists():
        path.write_bytes(data)


def indexed(folder: Path, collection: Path) -> tuple[Collection, float]:
    """The collection of ``folder`` (indexed now if new) and the seconds indexing took."""
    started = time.perf_counter()
    c = Collection.open(collection)
    c.index_folder(folder, progress=False)
    return c, time.perf_counter() - started


def part(c: Collection, truth: dict[str, tuple[str, str]], distractors: tuple[np.ndarray, list[str], list[str]]
         ) -> dict[str, object]:
    """One part's vectors (its photos and copies, then its distractors), content hashes, names and true pairs."""
    ids, vectors = c.store.matrix("image")
    items = c.store.get(ids)
    names = [Path(items[int(i)].path).name for i in ids] + distractors[1]
    row = {name: i for i, name in enumerate(names)}
    by_original: dict[str, list[int]] = {}
    for name, (original, _) in truth.items():
        by_original.setdefault(original, []).append(row[name])
    pairs = np.array([p for rows in by_original.values() for p in combinations(sorted(rows), 2)], dtype=np.int64)
    return {"vectors": np.concatenate([np.asarray(vectors), distractors[0]]), "names": names, "pairs": pairs,
            "hashes": [items[int(i)].hash for i in ids] + distractors[2]}


def labels_at(data: dict[str, object], threshold: float) -> np.ndarray:
    """Each row's group at ``threshold`` (-1: in none), grouped as `crossmodal duplicates` groups."""
    vectors = data["vectors"]
    labels = np.full(len(vectors), -1)
    groups = copy_groups(len(vectors), similar_pairs(vectors, threshold), same_content(data["hashes"]))
    for label, rows in enumerate(groups):
        labels[rows] = label
    return labels


def scores(labels: np.ndarray, pairs: np.ndarray) -> tuple[float, float, float]:
    """Pair precision, recall and F1: a pair is found when both photos land in one group."""
    sizes = np.bincount(labels[labels >= 0])
    found = int((sizes * (sizes - 1) // 2).sum())
    hits = int(((labels[pairs[:, 0]] == labels[pairs[:, 1]]) & (labels[pairs[:, 0]] >= 0)).sum())
    precision, recall = hits / max(found, 1), hits / max(len(pairs), 1)
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "flickr8k")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "duplicates")
    parser.add_argument("--timing-photos", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    images = args.dataset / "images"
    names = (args.dataset / "splits" / "dev.txt").read_text().split()
    rng = random.Random(args.seed)
    rng.shuffle(names)
    timed = timing_collection(args, console)
    distractors = split_distractors(timed, set(names), random.Random(args.seed + 1))
    parts = {}
    for (label, chosen), others in zip((("tune", names[: len(names) // 2]), ("test", names[len(names) // 2:])),
                                       distractors, strict=True):
        truth = make_half(chosen, images, args.work / label / "photos", rng)
        c, took = indexed(args.work / label / "photos", args.work / label / "collection")
        parts[label] = (part(c, truth, others), truth)
        console.print(f"{label}: {len(chosen)} dev photos + {len(truth) - len(chosen)} copies (indexed in "
                      f"{took:.1f} s) + {len(others[1])} other Flickr8k photos")

    table = Table(title="Flickr8k with synthetic near-copies: pairs found by grouping")
    for column in ("threshold", "tune P", "tune R", "tune F1", "test P", "test R", "test F1"):
        table.add_column(column, justify="right")
    best, rows = (-1.0, 0.0), {}
    for threshold in GRID:
        rows[threshold] = {k: scores(labels_at(data, threshold), data["pairs"]) for k, (data, _) in parts.items()}
        best = max(best, (rows[threshold]["tune"][2], threshold))
        table.add_row(f"{threshold:.3f}", *(f"{v:.3f}" for k in ("tune", "test") for v in rows[threshold][k]))
    console.print(table)
    chosen = best[1]
    p, r, f1 = rows[chosen]["test"]
    console.print(f"threshold chosen on the tuning part (best F1): {chosen:.3f} (shipped default {DEFAULT_THRESHOLD}); "
                  f"test part: precision {p:.3f}, recall {r:.3f}, F1 {f1:.3f}")
    data, truth = parts["test"]
    labels = labels_at(data, chosen)
    for kind in KINDS:
        wanted = np.array([pair for pair in data["pairs"] if {truth[data["names"][i]][1] for i in pair} == {"", kind}])
        console.print(f"  recall of original-{kind} pairs: {scores(labels, wanted)[1]:.3f} ({len(wanted)} pairs)")
    ours, grouped = len(truth), labels >= 0
    console.print(f"  grouped at {chosen:.3f}: {int(grouped[:ours].sum())} of {ours} dev photos and copies, "
                  f"{int(grouped[ours:].sum())} of {len(grouped) - ours} other photos")
    diversity(c, truth, args.dataset, console)
    timing(timed, console)


def diversity(c: Collection, truth: dict[str, tuple[str, str]], dataset: Path, console: Console) -> None:
    """Pages of 10 for a caption of each test-half photo, plainly ranked and with MMR: copies of a photo
    above on the page, and how often the caption's photo (or a copy of it) is on the page."""
    captions: dict[str, str] = {}
    for line in (dataset / "captions.tsv").read_text().splitlines()[1:]:
        image, _, caption = line.partition("\t")
        captions.setdefault(image, caption)
    originals = sorted({original for original, _ in truth.values()})
    queries = [captions[name] for name in originals]
    for lam in (None, 0.7, 0.5):
        started = time.perf_counter()
        pages = [c.search(text, k=10, ranking=Ranking(diversity=lam)) for text in queries]
        took = (time.perf_counter() - started) * 1000 / len(queries)
        shown = [[truth[Path(h.path).name][0] for h in hits] for hits in pages]
        repeats = np.mean([len(page) - len(set(page)) for page in shown])
        found = np.mean([name in page for name, page in zip(originals, shown, strict=True)])
        console.print(f"  MMR lambda {lam or 'off'}: {repeats:.2f} copies of a photo above per page of 10, "
                      f"the caption's photo on the page for {found:.3f} of {len(queries)} captions, "
                      f"{took:.0f} ms/query")


def timing_collection(args: argparse.Namespace, console: Console) -> Collection:
    """The first ``--timing-photos`` Flickr8k photos (all splits) indexed, with the time it took if new."""
    paths = sorted((args.dataset / "images").iterdir())[: args.timing_photos]
    c = Collection.open(args.work / f"timing-{len(paths)}")
    before, started = c.store.count("image"), time.perf_counter()
    c.add_images(paths, progress=True)
    added = c.store.count("image") - before
    if added:
        took = time.perf_counter() - started
        console.print(f"indexed {added} photos in {took:.0f} s ({added / took:.1f} photos/s)")
    return c


def split_distractors(c: Collection, dev: set[str], rng: random.Random
                      ) -> list[tuple[np.ndarray, list[str], list[str]]]:
    """The timing collection's photos outside dev, shuffled into two halves: (vectors, names, hashes) each."""
    ids, vectors = c.store.matrix("image")
    items = c.store.get(ids)
    rows = [i for i, item_id in enumerate(ids) if Path(items[int(item_id)].path).name not in dev]
    rng.shuffle(rows)
    halves = [sorted(rows[: len(rows) // 2]), sorted(rows[len(rows) // 2:])]
    return [(np.asarray(vectors[h]), [Path(items[int(ids[i])].path).name for i in h],
             [items[int(ids[i])].hash for i in h]) for h in halves]


def timing(c: Collection, console: Console) -> None:
    """Time grouping the timing collection's photos as `crossmodal duplicates` does."""
    c.store.matrix("image")  # the snapshot, as a collection that has been searched has it
    for read_sizes in (False, True):
        times, groups = [], []
        for _ in range(5):
            started = time.perf_counter()
            groups = find_duplicates(c, DEFAULT_THRESHOLD, read_sizes=read_sizes)
            times.append(time.perf_counter() - started)
        console.print(f"{c.store.count('image')} photos, threshold {DEFAULT_THRESHOLD}: {len(groups)} groups of "
                      f"{sum(len(g.photos) for g in groups)} photos; grouping "
                      f"{'with headers read' if read_sizes else 'only'}: median {np.median(times) * 1000:.0f} ms "
                      f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}) over 5 runs; load average "
                      f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
