"""Probe: caption words predicted from the photo tower's pooled features, as hybrid evidence (nothing shipped).

    python benchmarks/word_evidence.py [--cache runs/cache/reranker] [--epochs 40] [--top 128]
        [--features pooled|tokens] [--stage hybrid|rerank]

A linear multi-label classifier reads lite's pooled photo features (the 1280-d mean of the grid, what lite's
image head projects to 512-d; or, with ``--features tokens``, the reranker's photo tokens, 10 x 96, which a
collection already stores for every photo) and predicts which words of the train captions' vocabulary (train_sparse's
WordPiece vocabulary) a photo's captions use; binary cross-entropy, trained on Flickr8k `train`. A caption and
a photo then score ``sum over the caption's words of idf(word) x P(word | photo)``, the photo keeping its
``--top`` most likely words: a sparse dot product (LexLIP's lexical text side: a caption is its own words).
That score is the sparse evidence of the ``hybrid`` retriever (search/hybrid.py), through the same pipeline
eval runs (normalisation, keyword evidence, rerank); its share is chosen on `dev` and `test` is read once.
With ``--stage rerank`` the same evidence is instead added to the reranker's logits on the top 16 only
(scaled by its best among them): fused = dual + weight x logit + share x evidence / best evidence.
It answers whether lexical evidence from features the dense vector leaves out can add to dense ranking, which
the shipped sparse heads (they read the 512-d vector) cannot.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crossmodal.encoders import load_encoder
from crossmodal.encoders.lite import WEIGHTS, LiteEncoder
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.evaluation.runner import dataset_keywords, embed_dataset
from crossmodal.rerank.runtime import Reranker
from crossmodal.search import hybrid
from crossmodal.search.normalise import find_bank
from crossmodal.search.pipeline import Ranking, SetScorer, SetScores
from crossmodal.search.rerank import dataset_scorers, find_reranker
from crossmodal.sources.datasets import load_dataset
from crossmodal.training.train_reranker import cached_features
from crossmodal.training.train_sparse import bags, lite_tokens, vocabulary

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"
SHARES = (0.05, 0.1, 0.2, 0.3, 0.5)


def photo_features(grids: np.ndarray, kind: str, reranker: Reranker) -> np.ndarray:
    """Per photo, what the classifier reads: the photo tower's pooled features (N, 1280), the mean of each grid's
    cells; or the reranker's photo tokens of the grid, flattened (N, tokens x d)."""
    out = []
    for start in range(0, len(grids), 250):
        cells = np.asarray(grids[start:start + 250], dtype=np.float32)  # (n, 49, 1280)
        if kind == "pooled":
            out.append(cells.mean(1))
        else:
            side = int(round(cells.shape[1] ** 0.5))
            grid = cells.transpose(0, 2, 1).reshape(len(cells), -1, side, side)
            out.append(reranker.photo_tokens(grid).reshape(len(cells), -1).astype(np.float32))
    return np.concatenate(out)


def bag_matrix(rows: list[np.ndarray], width: int, weights: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.float32)
    for r, words in enumerate(rows):
        out[r, words] = 1.0 if weights is None else weights[words]
    return out


def train_classifier(x: np.ndarray, targets: np.ndarray, epochs: int, seed: int = 0
                     ) -> tuple[torch.nn.Linear, np.ndarray, np.ndarray]:
    """Linear word classifier on standardised features: (layer, feature mean, feature scale)."""
    torch.manual_seed(seed)
    mean, scale = x.mean(0), x.std(0) + 1e-3
    inputs, y = torch.from_numpy((x - mean) / scale), torch.from_numpy(targets)
    layer = torch.nn.Linear(x.shape[1], targets.shape[1])
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(epochs):
        order = torch.randperm(len(inputs))
        for start in range(0, len(order), 500):
            rows = order[start:start + 500]
            loss = F.binary_cross_entropy_with_logits(layer(inputs[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return layer, mean, scale


def keep_top(p: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` largest values, the rest zero (what an inverted index would hold)."""
    out = np.zeros_like(p)
    top = np.argpartition(-p, k - 1, axis=1)[:, :k]
    np.put_along_axis(out, top, np.take_along_axis(p, top, axis=1), axis=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--cache", default="runs/cache/reranker")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--top", type=int, default=128, help="words kept per photo")
    parser.add_argument("--features", choices=("pooled", "tokens"), default="pooled")
    parser.add_argument("--stage", choices=("hybrid", "rerank"), default="hybrid")
    args = parser.parse_args()
    torch_lite, encoder = LiteEncoder(WEIGHTS), load_encoder("lite")
    bank, reranker = find_bank(encoder.fingerprint), find_reranker(encoder.fingerprint)
    tokenize, tokens = lite_tokens()
    splits = {s: load_dataset(args.dataset, s) for s in ("train", "dev", "test")}
    features = {s: photo_features(cached_features(torch_lite, d, Path(args.cache)).grids, args.features, reranker)
                for s, d in splits.items()}
    train_ids = tokenize(splits["train"].texts)
    vocab = vocabulary(train_ids, tokens)
    train_bags = bags(train_ids, vocab)
    counts = bag_matrix(train_bags, len(vocab)).sum(0)
    idf = np.log((len(train_bags) + 1) / (counts + 1)).astype(np.float32)
    targets = np.zeros((len(splits["train"].images), len(vocab)), dtype=np.float32)
    for j, words in enumerate(train_bags):
        targets[splits["train"].text_image[j], words] = 1.0
    started = time.time()
    layer, mean, scale = train_classifier(features["train"], targets, args.epochs)
    print(f"word classifier on {args.features} features ({features['train'].shape[1]}-d): {len(vocab)} words, "
          f"{args.epochs} epochs, {time.time() - started:.0f} s", flush=True)

    def figures(split: str, shares: tuple[float, ...]) -> dict[tuple[int, float], float]:
        data = splits[split]
        emb = embed_dataset(encoder, data, progress=False, reranker=reranker)
        with torch.no_grad():
            p = torch.sigmoid(layer(torch.from_numpy((features[split] - mean) / scale))).numpy()
        photo_words = keep_top(p, args.top)
        caption_words = bag_matrix(bags(tokenize(data.texts), vocab), len(vocab), idf)
        evidence = caption_words @ photo_words.T  # (captions, photos)

        def sparse(direction: str, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
            return evidence[np.ix_(items, queries)].T.copy() if direction == "i2t" else evidence[np.ix_(queries, items)]

        scorers = dataset_scorers(encoder, reranker, data, emb.photo_tokens)

        def with_words(kind: str, share: float) -> SetScorer:
            def scorer(query: int, items: np.ndarray) -> np.ndarray | None:
                logits = scorers[kind](query, items)
                found = evidence[query, items] if kind == "image" else evidence[items, query]
                return None if logits is None else logits + share / reranker.weight * found / max(found.max(), 1e-6)
            return scorer

        out = {}
        for rerank in (0, 16) if args.stage == "hybrid" else (16,):
            for share in (0.0, *shares):
                hybrid.SPARSE_WEIGHT = share if args.stage == "hybrid" else 0.0
                ranking = Ranking(rerank=rerank, retriever="hybrid" if share and args.stage == "hybrid" else "dense")
                rerankers = {kind: (with_words(kind, share) if args.stage == "rerank" else s, reranker.weight)
                             for kind, s in scorers.items()} if rerank else {}
                score = SetScores(emb.images, emb.texts, ranking, bank, rerankers,
                                  keywords=dataset_keywords(data) if share else None, sparse=sparse)
                ranks = evaluate_embeddings(emb.images, emb.texts, data.text_image, score)
                out[rerank, share] = ranks.metrics()["rsum"]
        return out

    dev = figures("dev", SHARES)
    depths = (0, 16) if args.stage == "hybrid" else (16,)
    best = {r: max(SHARES, key=lambda s, r=r: dev[r, s]) for r in depths}
    test = figures("test", tuple(sorted(set(best.values()))))
    print(f"\nFlickr8k RSUM, normalised; words share chosen on dev (swept: {', '.join(map(str, SHARES))}); "
          f"{args.top} words kept per photo; evidence in the {args.stage} stage\n")
    print("| pipeline | dev | test |\n|---|---|---|")
    for r in depths:
        name = "dense + norm" if r == 0 else "dense + norm + rerank 16 (default)"
        print(f"| {name} | {dev[r, 0.0]:.2f} | {test[r, 0.0]:.2f} |")
        print(f"| {name} + words, share {best[r]} | {dev[r, best[r]]:.2f} | {test[r, best[r]]:.2f} |")
    print("\ndev sweep: " + "; ".join(f"rerank {r}, share {s}: {dev[r, s]:.2f}" for r in depths for s in SHARES))


if __name__ == "__main__":
    main()
