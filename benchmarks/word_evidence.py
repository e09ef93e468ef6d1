"""Caption words predicted from the photo tower's pooled features: the evidence lite's reranker ships, and where else
it could go.

    python benchmarks/word_evidence.py [--cache runs/cache/reranker] [--epochs 40]
        [--stage rerank-photos|rerank|hybrid] [--features pooled|tokens] [--top 128] [--write words.npz]

The word classifier (rerank/words.py, trained by training/train_words.py on Flickr8k `train`) reads lite's
pooled photo features (the 1280-d mean of the grid, which lite's image head projects to 512-d; or, with
``--features tokens``, the reranker's stored photo tokens) and gives P(word | photo); a caption and a photo score
``sum over the caption's own words of idf(word) x P(word | photo)``. Stages, each through the pipeline eval runs
(normalisation, rerank), the share chosen on `dev` and `test` read once:
- ``rerank-photos`` (shipped): the rerank stage of a photo query ranking captions adds ``share`` x the evidence
  over its best among the top 16 (the reranker's own scorers, as search runs them);
- ``rerank``: the same for text queries ranking photos too (a stored photo keeps no pooled features);
- ``hybrid``: the evidence as the sparse share of the hybrid retriever over every item (each photo keeping its
  ``--top`` words).
``--write`` saves the classifier with the dev-chosen share: lite's reranker folder holds the one it wrote.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from crossmodal.encoders import load_encoder
from crossmodal.encoders.lite import WEIGHTS, LiteEncoder
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.evaluation.runner import dataset_keywords, embed_dataset
from crossmodal.rerank.runtime import Reranker
from crossmodal.rerank.words import with_words
from crossmodal.search import hybrid
from crossmodal.search.normalise import find_bank
from crossmodal.search.pipeline import Ranking, SetScorer, SetScores
from crossmodal.search.rerank import dataset_scorers, find_reranker
from crossmodal.search.sparse import keep_top
from crossmodal.sources.datasets import load_dataset
from crossmodal.training.train_reranker import SplitFeatures, cached_features
from crossmodal.training.train_words import train_words

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"
SHARES = (0.05, 0.1, 0.2, 0.3, 0.5)


def photo_features(feats: SplitFeatures, kind: str, reranker: Reranker) -> np.ndarray:
    """Per photo, what the classifier reads: the photo tower's pooled features (N, 1280); or the reranker's
    photo tokens of the grid, flattened (N, tokens x d)."""
    if kind == "pooled":
        return feats.pooled_photos()
    out = []
    for start in range(0, len(feats.grids), 250):
        cells = np.asarray(feats.grids[start:start + 250], dtype=np.float32)  # (n, 49, 1280)
        side = int(round(cells.shape[1] ** 0.5))
        grid = cells.transpose(0, 2, 1).reshape(len(cells), -1, side, side)
        out.append(reranker.photo_tokens(grid).reshape(len(cells), -1).astype(np.float32))
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--cache", default="runs/cache/reranker")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--top", type=int, default=128, help="words kept per photo (hybrid)")
    parser.add_argument("--features", choices=("pooled", "tokens"), default="pooled")
    parser.add_argument("--stage", choices=("hybrid", "rerank", "rerank-photos"), default="rerank-photos")
    parser.add_argument("--write", type=Path, help="save the classifier with the dev-chosen share (words.npz)")
    args = parser.parse_args()
    if args.stage == "rerank-photos" and args.features != "pooled":
        parser.error("the rerank-photos stage is the shipped path: it reads pooled features")
    torch_lite, encoder = LiteEncoder(WEIGHTS), load_encoder("lite")
    bank, reranker = find_bank(encoder.fingerprint), find_reranker(encoder.fingerprint)
    splits = {s: load_dataset(args.dataset, s) for s in ("train", "dev", "test")}
    features = {s: photo_features(cached_features(torch_lite, d, Path(args.cache)), args.features, reranker)
                for s, d in splits.items()}
    started = time.time()
    model, history = train_words(features["train"], splits["train"].texts, splits["train"].text_image, share=0.0,
                                 epochs=args.epochs)
    print(f"word classifier on {args.features} features ({features['train'].shape[1]}-d): {len(model.vocab)} words, "
          f"{args.epochs} epochs, {time.time() - started:.0f} s, loss {history[0]:.4f} -> {history[-1]:.4f}",
          flush=True)
    if args.stage == "rerank-photos":
        reranker.words = model  # the shipped path: the reranker's scorers fold the evidence in

    def figures(split: str, shares: tuple[float, ...]) -> dict[tuple[int, float], float]:
        data = splits[split]
        emb = embed_dataset(encoder, data, progress=False, reranker=reranker)
        evidence = (keep_top(model.photo_words(features[split]), args.top) @ model.text_rows(data.texts).T).T.toarray()

        def sparse(direction: str, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
            return evidence[np.ix_(items, queries)].T.copy() if direction == "i2t" else evidence[np.ix_(queries, items)]

        scorers = dataset_scorers(encoder, reranker, data, emb.photo_tokens, words=emb.photo_words)

        def both_ways(kind: str, share: float) -> SetScorer:
            def scorer(query: int, items: np.ndarray) -> np.ndarray | None:
                logits = scorers[kind](query, items)
                found = evidence[query, items] if kind == "image" else evidence[items, query]
                return None if logits is None else with_words(logits, found, share, reranker.weight)
            return scorer

        out = {}
        for rerank in (0, 16) if args.stage == "hybrid" else (16,):
            for share in (0.0, *shares):
                model.share = share
                hybrid.SPARSE_WEIGHT = share if args.stage == "hybrid" else 0.0
                ranking = Ranking(rerank=rerank, retriever="hybrid" if share and args.stage == "hybrid" else "dense")
                rerankers = {kind: (both_ways(kind, share) if args.stage == "rerank" else s, reranker.weight)
                             for kind, s in scorers.items()} if rerank else {}
                score = SetScores(emb.images, emb.texts, ranking, bank, rerankers,
                                  keywords=dataset_keywords(data) if share else None, sparse=sparse,
                                  caption_emb=emb.caption_vectors, photo_queries=emb.query_photos)
                ranks = evaluate_embeddings(emb.images, emb.texts, data.text_image, score)
                out[rerank, share] = ranks.metrics()["rsum"]
        return out

    dev = figures("dev", SHARES)
    depths = (0, 16) if args.stage == "hybrid" else (16,)
    best = {r: max(SHARES, key=lambda s, r=r: dev[r, s]) for r in depths}
    test = figures("test", tuple(sorted(set(best.values()))))
    print(f"\nFlickr8k RSUM, normalised; words share chosen on dev (swept: {', '.join(map(str, SHARES))}); "
          f"evidence in the {args.stage} stage\n")
    print("| pipeline | dev | test |\n|---|---|---|")
    for r in depths:
        name = "dense + norm" if r == 0 else "dense + norm + rerank 16"
        print(f"| {name} | {dev[r, 0.0]:.2f} | {test[r, 0.0]:.2f} |")
        print(f"| {name} + words, share {best[r]} | {dev[r, best[r]]:.2f} | {test[r, best[r]]:.2f} |")
    print("\ndev sweep: " + "; ".join(f"rerank {r}, share {s}: {dev[r, s]:.2f}" for r in depths for s in SHARES))
    if args.write:
        model.share = best[depths[-1]]
        model.save(args.write)
        print(f"wrote {args.write} (share {model.share})")


if __name__ == "__main__":
    main()
