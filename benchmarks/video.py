"""Finding the moment in a video: synthetic slideshows of Flickr8k `test` photos, searched by their captions.

    OMP_NUM_THREADS=1 python benchmarks/video.py [--videos 50] [--scenes 5] [--hold 4] [--fps 10] [--long 600]

Each video shows ``--scenes`` photos for ``--hold`` seconds each (320x240, mpeg4), so scene i spans
[i * hold, (i + 1) * hold). Every caption of every scene's photo is a query (search kind ``video``: results
collapsed to one per video). Reports video R@1 / R@5 (the right video among the collapsed results), moment
accuracy (the right video first and its best moment's t inside the right scene; and, given the right video,
its moment inside the right scene), and indexing speed: seconds of video per second, moments per second and
photos-equivalent per second (the same photos indexed as JPEG files, for reference). ``--long`` adds one video
of that many seconds (seek sampling) with its indexing speed and the peak memory growth.
"""

from __future__ import annotations

import argparse
import csv
import resource
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table

from crossmodal.collection.collection import Collection
from crossmodal.search.query import text_queries
from crossmodal.sources.videos import write_slideshow

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"
SIZE = (320, 240)


def captions(names: set[str]) -> dict[str, list[str]]:
    """Every caption of the given photos."""
    out: dict[str, list[str]] = {}
    with open(FLICKR / "captions.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["image"] in names:
                out.setdefault(row["image"], []).append(row["caption"])
    return out


def peak_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=50)
    ap.add_argument("--scenes", type=int, default=5)
    ap.add_argument("--hold", type=float, default=4.0)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--long", type=float, default=600.0, help="seconds of the long video (0: none)")
    args = ap.parse_args()
    names = (FLICKR / "splits" / "test.txt").read_text().split()[: args.videos * args.scenes]
    scenes = [names[i * args.scenes:(i + 1) * args.scenes] for i in range(args.videos)]
    said = captions(set(names))
    work = Path(tempfile.mkdtemp(prefix="video-bench-"))
    try:
        folder, photos = work / "videos", work / "photos"
        folder.mkdir()
        photos.mkdir()
        length = 0.0
        for i, group in enumerate(scenes):
            length += write_slideshow(folder / f"v{i:03d}.mp4", [Image.open(FLICKR / "images" / n) for n in group],
                                      hold=args.hold, fps=args.fps, size=SIZE)
        for n in names:
            shutil.copy(FLICKR / "images" / n, photos / n)

        c = Collection.open(work / "col", model="lite")
        c.encoder.encode_texts(["warm up"])
        started = time.perf_counter()
        c.index_folder(folder, progress=False)
        video_s = time.perf_counter() - started
        moments = c.store.count("image")
        p = Collection.open(work / "photo-col", model="lite")
        started = time.perf_counter()
        p.index_folder(photos, progress=False)
        photo_s = time.perf_counter() - started

        queries = [(v, s, text) for v, group in enumerate(scenes) for s, n in enumerate(group) for text in said[n]]
        r1 = r5 = moment1 = moment_given = found = 0
        started = time.perf_counter()
        for start in range(0, len(queries), 64):
            chunk = queries[start:start + 64]
            results = c.search_queries(text_queries(c.encoder, [q[2] for q in chunk]), k=args.videos, kind="video")
            for (v, s, _), hits in zip(chunk, results, strict=True):
                order = [Path(h.path).name for h in hits]
                right = f"v{v:03d}.mp4"
                rank = order.index(right) if right in order else len(order)
                inside = rank < len(order) and s * args.hold <= hits[rank].t < (s + 1) * args.hold
                r1 += rank == 0
                r5 += rank < 5
                moment1 += rank == 0 and inside
                moment_given += inside
                found += rank < len(order)
        search_s = time.perf_counter() - started
        n = len(queries)
        video_of = {name: v for v, group in enumerate(scenes) for name in group}
        still1 = still5 = 0  # the same queries over the photos themselves, each standing for its video
        for start in range(0, len(queries), 64):
            chunk = queries[start:start + 64]
            results = p.search_queries(text_queries(p.encoder, [q[2] for q in chunk]), k=len(names))
            for (v, _, _), hits in zip(chunk, results, strict=True):
                order = list(dict.fromkeys(video_of[Path(h.path).name] for h in hits))
                still1 += order[0] == v
                still5 += v in order[:5]

        table = Table(title=f"{args.videos} videos x {args.scenes} scenes of {args.hold:g} s ({SIZE[0]}x{SIZE[1]}, "
                      f"{args.fps} fps), lite, {n} caption queries")
        for column in ("measure", "value"):
            table.add_column(column)
        rows = [
            ("video R@1", f"{100 * r1 / n:.1f}"),
            ("video R@5", f"{100 * r5 / n:.1f}"),
            ("the same, each video's photos as JPEG stills standing for it: video R@1 / R@5",
             f"{100 * still1 / n:.1f} / {100 * still5 / n:.1f}"),
            ("moment accuracy (right video first, t in the right scene)", f"{100 * moment1 / n:.1f}"),
            ("moment accuracy given the right video", f"{100 * moment_given / max(found, 1):.1f}"),
            ("moments stored (per video)", f"{moments} ({moments / args.videos:.1f})"),
            ("indexing: seconds of video per second", f"{length / video_s:.1f}"),
            ("indexing: moments per second", f"{moments / video_s:.1f}"),
            ("indexing: photos-equivalent per second (moments / s of the same photos as JPEG)",
             f"{moments / video_s:.1f} / {len(names) / photo_s:.1f}"),
            ("search: ms per query (batches of 64)", f"{1000 * search_s / n:.1f}"),
        ]
        if args.long:
            long_names = names[: max(1, int(args.long // 10))]
            before = peak_mb()
            (work / "long").mkdir()
            long_photos = [Image.open(FLICKR / "images" / n) for n in long_names]
            long_length = write_slideshow(work / "long" / "long.mp4", long_photos, args.long / len(long_names),
                                          fps=args.fps, size=SIZE)
            started = time.perf_counter()
            c.index_folder(work / "long", progress=False)
            long_s = time.perf_counter() - started
            rows += [(f"long video ({long_length:.0f} s, seek sampling): seconds of video per second",
                      f"{long_length / long_s:.1f}"),
                     ("long video: moments stored", str(c.store.count("image") - moments)),
                     ("long video: peak memory growth while writing and indexing (MB)", f"{peak_mb() - before:.0f}")]
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        print(f"timings: videos {video_s:.1f} s for {length:.0f} s of video; photos {photo_s:.1f} s; "
              f"peak memory {peak_mb():.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
