"""Choose the ranking pipeline's settings for a model on Flickr8k dev: the bank's share and k, the caption words'
share in the hybrid score, the reranker's fusion weight and depth.

    python benchmarks/tune_pipeline.py [--model lite] [--split dev] [--rounds 2] [--reranker FOLDER]

The split is encoded once; each setting is then varied over its grid with the others held (coordinate ascent
from the shipped values, ``--rounds`` passes), every candidate ranked through the default pipeline as `crossmodal
eval` ranks it (search/pipeline.py). Prints each setting's row of RSUM, then the best settings found. Choose on
dev; rank test once, for the settings chosen (``--split test --fixed``: the shipped settings and the ones given).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from crossmodal.encoders import load_encoder
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.evaluation.runner import embed_dataset, pipeline_scores
from crossmodal.search import hybrid
from crossmodal.search.normalise import Bank, find_bank
from crossmodal.search.pipeline import Ranking
from crossmodal.search.rerank import find_reranker
from crossmodal.sources.datasets import load_dataset

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"
GRIDS = {"share": [0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0], "top_k": [16, 32, 64, 128, 256],
         "words": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3], "weight": [0.0, 0.0025, 0.005, 0.0075, 0.01, 0.015],
         "rerank": [8, 16, 32, 64]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite")
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reranker", help="another reranker for the model (`crossmodal train --reranker --out`)")
    parser.add_argument("--fixed", nargs="*", default=None, metavar="NAME=VALUE",
                        help="rank these settings (and the shipped ones) only, no search")
    args = parser.parse_args()
    encoder = load_encoder(args.model)
    bank = find_bank(encoder.fingerprint)
    reranker = find_reranker(encoder.fingerprint, *([Path(args.reranker)] if args.reranker else []))
    emb = embed_dataset(encoder, load_dataset(args.dataset, args.split), progress=False, reranker=reranker)
    shipped = {"share": bank.share, "top_k": bank.top_k, "words": hybrid.SPARSE_WEIGHT, "weight": reranker.weight,
               "rerank": Ranking().rerank}
    banks: dict[int, Bank] = {}

    def rsum(settings: dict[str, float]) -> tuple[float, float, float]:
        if settings["top_k"] not in banks:
            banks[settings["top_k"]] = Bank(bank.vectors("texts"), bank.vectors("images"), bank.fingerprint,
                                            int(settings["top_k"]))
        tuned = banks[settings["top_k"]]
        tuned.share, reranker.weight, hybrid.SPARSE_WEIGHT = settings["share"], settings["weight"], settings["words"]
        m = evaluate_embeddings(emb.images, emb.texts, emb.data.text_image, pipeline_scores(
            encoder, emb, replace(Ranking(), rerank=int(settings["rerank"])), tuned, reranker)).metrics()
        return m["rsum"], sum(m[f"t2i_R@{k}"] for k in (1, 5, 10)), sum(m[f"i2t_R@{k}"] for k in (1, 5, 10))

    if args.fixed is not None:
        given = {**shipped, **{k: float(v) for k, v in (s.split("=") for s in args.fixed)}}
        for name, settings in (("shipped", shipped), ("given", given)):
            print(f"| {name} | {settings} | " + " | ".join(f"{x:.2f}" for x in rsum(settings)) + " |", flush=True)
        return
    best = dict(shipped)
    best_rsum = rsum(best)[0]
    print(f"{args.split}, shipped settings {shipped}: RSUM {best_rsum:.2f}\n", flush=True)
    print("| round | setting | " + " | ".join(["value: RSUM (t2i / i2t)"] * 2) + " |", flush=True)
    for round_ in range(1, args.rounds + 1):
        for name, grid in GRIDS.items():
            cells = []
            for value in grid:
                figures = rsum({**best, name: value})
                cells.append(f"{value}: {figures[0]:.2f} ({figures[1]:.2f} / {figures[2]:.2f})")
                if figures[0] > best_rsum + 1e-6:
                    best_rsum, best = figures[0], {**best, name: value}
            print(f"| {round_} | {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nbest on {args.split}: {best}: RSUM {best_rsum:.2f}")


if __name__ == "__main__":
    main()
