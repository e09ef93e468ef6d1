"""Ranking quality and cost of each pipeline stage on Flickr8k dev and test, in one run.

    python benchmarks/quality.py [--model lite] [--splits dev test] [--ns 8 16 32 64] [--also runs/lite-v4]
        [--caption-shares 0 0.3 0.4 0.5]

Each split is encoded once; every configuration ranks the same vectors through the search pipeline's
stages (search/pipeline.py), as `crossmodal eval` does, by the dense and the hybrid retriever (dense + BM25 +
the caption words stored per photo, search/hybrid.py). ms/query is the ranking time per query (both
directions, 1K photos / 5K captions, eval's exhaustive scoring) on top of encoding the query, which the encode
column gives (a text query's; "both towers" rows: through both text towers, `--both-towers`).
Also prints, for the default pipeline on dev (and with `--retriever dense`), what a score cutoff (`--min-score`)
removes: the share of
wrong and of right results among each text query's top 10 that score under it.
`--also` measures more models in the same run: e.g. the previous lite, kept as a model folder (its
lite.safetensors, multilingual.safetensors, and its bank.npz and reranker/, which are looked up there first).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from crossmodal.encoders import load_encoder
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.evaluation.runner import embed_dataset, pipeline_scores
from crossmodal.search.normalise import BANK_FILE, find_bank
from crossmodal.search.pipeline import DEFAULT_RERANK, Ranking, Timings
from crossmodal.search.rerank import RERANKER_DIR, find_reranker
from crossmodal.sources.datasets import load_dataset

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"


ONE_VIEW = "photo queries read once"  # a row label's mark: photo queries without their mirror images (before)


def configurations(ns: list[int]) -> list[tuple[str, Ranking, bool]]:
    """(label, ranking, whether photo queries' rerank counts caption words) of each measured configuration; a label
    with ``ONE_VIEW`` reads photo queries ranking captions once, without their mirror images."""
    dense = Ranking(norm=True, rerank=0, retriever="dense")
    rows = [(f"dual encoder, {ONE_VIEW}", replace(dense, norm=False), True),
            ("dual encoder", replace(dense, norm=False), True), ("+ normalisation", dense, True),
            ("+ normalisation + hybrid (caption words)", replace(dense, retriever="hybrid"), True)]
    for retriever, name in (("dense", ""), ("hybrid", " + hybrid")):
        rows += [(f"+ norm{name} + rerank {n}", replace(dense, rerank=n, retriever=retriever), True) for n in ns]
    rows += [(f"+ norm + rerank {DEFAULT_RERANK}, without caption words", replace(dense, rerank=DEFAULT_RERANK),
              False)]
    rows += [(f"rerank {DEFAULT_RERANK}, no norm", replace(dense, norm=False, rerank=DEFAULT_RERANK), True)]
    rows += [(f"+ norm + hybrid + rerank {DEFAULT_RERANK}, {ONE_VIEW}", Ranking(), True)]
    both = replace(dense, both_towers=True)  # text queries through both text towers (--both-towers)
    rows += [("dual encoder, both towers", replace(both, norm=False), True),
             ("+ normalisation, both towers", both, True),
             (f"+ norm + hybrid + rerank {DEFAULT_RERANK}, both towers",
              replace(both, rerank=DEFAULT_RERANK, retriever="hybrid"), True)]
    return rows


def cutoff_table(score, emb, thresholds: list[float]) -> list[tuple[float, float, float]]:
    """(threshold, share of wrong results removed, share of right results kept) over text queries' top 10,
    with the scores search shows (``SetScores.ranked``)."""
    right, wrong = [], []
    for start in range(0, len(emb.texts), 512):
        queries = np.arange(start, min(start + 512, len(emb.texts)))
        for q, (scores, top) in zip(queries, score.ranked("t2i", queries, np.arange(len(emb.images)), 10),
                                    strict=True):
            positive = top == emb.data.text_image[q]
            right.append(scores[positive])
            wrong.append(scores[~positive])
    right, wrong = np.concatenate(right), np.concatenate(wrong)
    return [(t, float((wrong < t).mean()), float((right >= t).mean())) for t in thresholds]


def caption_shares(encoder, emb, bank, reranker, shares: list[float]) -> None:
    """Photo -> caption RSUM and RSUM of dense + norm and of the default pipeline with the captions stored at each
    multilingual tower's share of the blend (``Encoder.blend_captions``; 0: lite's tower alone)."""
    tower = encoder.multilingual
    shipped = tower.caption_share
    print("\n| tower's share | dense + norm: i2t | dense + norm: RSUM | default: i2t | default: RSUM |")
    print("|---|---|---|---|---|")
    for share in shares:
        tower.caption_share = share
        blended = replace(emb, captions=encoder.blend_captions(emb.data.texts, emb.texts))
        cells = []
        for ranking in (Ranking(rerank=0, retriever="dense"), Ranking()):
            m = evaluate_embeddings(emb.images, emb.texts, emb.data.text_image,
                                    pipeline_scores(encoder, blended, ranking, bank, reranker)).metrics()
            cells += [f"{sum(m[f'i2t_R@{k}'] for k in (1, 5, 10)):.2f}", f"{m['rsum']:.2f}"]
        print(f"| {share} | " + " | ".join(cells) + " |", flush=True)
    tower.caption_share = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite")
    parser.add_argument("--also", nargs="*", default=[], help="More models (e.g. a distilled one) to measure.")
    parser.add_argument("--splits", nargs="+", default=["dev", "test"])
    parser.add_argument("--ns", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--cutoffs", nargs="+", type=float, default=[-0.04, -0.02, 0.0, 0.01, 0.02, 0.05, 0.08])
    parser.add_argument("--caption-shares", nargs="*", type=float, default=[],
                        help="Also rank the first split with the captions stored at these shares of the "
                             "multilingual tower (0.4 ships).")
    args = parser.parse_args()
    table: dict[tuple[str, str], dict[str, float]] = {}
    for model in [args.model, *args.also]:
        encoder = load_encoder(model)
        own = Path(model) if Path(model).is_dir() else None  # a model folder's own bank and reranker come first
        bank = find_bank(encoder.fingerprint, *([own / BANK_FILE] if own else []))
        reranker = find_reranker(encoder.fingerprint, *([own / RERANKER_DIR] if own else []))
        for split in args.splits:
            data = load_dataset(args.dataset, split)
            emb = embed_dataset(encoder, data, progress=False, reranker=reranker)
            encode_ms = 1000 * emb.text_seconds / len(emb.texts)
            start = time.perf_counter()  # what a text query through both towers adds: the tower and the blend
            encoder.blend_captions(data.texts, emb.texts)
            both_ms = encode_ms + 1000 * (time.perf_counter() - start) / len(emb.texts)
            for label, ranking, words in configurations(args.ns):
                if (ranking.norm and bank is None) or (ranking.rerank and reranker is None):
                    continue
                timings = Timings()
                seen = replace(emb, photo_queries=None) if ONE_VIEW in label else emb
                score = pipeline_scores(encoder, seen if words else replace(seen, photo_words=None), ranking, bank,
                                        reranker, timings)
                metrics = evaluate_embeddings(emb.images, emb.texts, emb.data.text_image, score).metrics()
                table[(f"{Path(model).name}: {label}", split)] = {
                    "rsum": metrics["rsum"], "ms": sum(timings.per_query_ms().values()),
                    "encode": both_ms if ranking.both_towers else encode_ms,
                    "r1": metrics["t2i_R@1"], "r10": metrics["t2i_R@10"],
                    "i1": metrics["i2t_R@1"], "i10": metrics["i2t_R@10"]}
                print(f"{model} {split} {label}: RSUM {metrics['rsum']:.2f}", flush=True)
            if split == "dev" and model == args.model:
                cutoffs = [cutoff_table(pipeline_scores(encoder, emb, ranking, bank, reranker), emb, args.cutoffs)
                           for ranking in (Ranking(), Ranking(retriever="dense"))]
            if args.caption_shares and split == args.splits[0] and encoder.multilingual is not None:
                caption_shares(encoder, emb, bank, reranker, args.caption_shares)
    labels = list(dict.fromkeys(label for label, _ in table))
    print(f"\nFlickr8k (1K photos, 5K captions per split), {os.cpu_count()} cores\n")
    header = " | ".join(f"{s} RSUM | {s} t2i R@1 / R@10 | {s} i2t R@1 / R@10" for s in args.splits)
    print(f"| configuration | {header} | rank ms/query | encode ms/query |")
    print("|---" * (2 + 3 * len(args.splits) + 1) + "|")
    for label in labels:
        cells = []
        for split in args.splits:
            row = table.get((label, split))
            cells += ([f"{row['rsum']:.2f}", f"{row['r1']:.1f} / {row['r10']:.1f}",
                       f"{row['i1']:.1f} / {row['i10']:.1f}"] if row else ["", "", ""])
        last = table[(label, args.splits[0])]
        print(f"| {label} | " + " | ".join(cells) + f" | {last['ms']:.2f} | {last['encode']:.2f} |")
    if "dev" in args.splits:
        print("\n--min-score on the default pipeline, Flickr8k dev, each caption's top 10 photos\n")
        print("| min score | wrong results removed | right results kept | with `--retriever dense`: removed | kept |")
        print("|---|---|---|---|---|")
        for (threshold, removed, kept), (_, dense_removed, dense_kept) in zip(*cutoffs, strict=True):
            print(f"| {threshold:.2f} | {100 * removed:.1f}% | {100 * kept:.1f}% | {100 * dense_removed:.1f}% | "
                  f"{100 * dense_kept:.1f}% |")


if __name__ == "__main__":
    main()
