"""Probe: which view of a photo should lite's photo tower read (dev to choose, test once for a shipped view)?

    python benchmarks/photo_views.py [--views flip centre288 flip@11 ...] [--split dev]

Today a photo is resized (short side 224) and centre-cropped. This encodes the split's photos in other views with the
same model (PyTorch, lite's shipped weights) and ranks them through the search pipeline (dense alone,
+ normalisation, the default pipeline) with everything else as shipped (captions as stored, the bank's biases
computed from the new photo vectors as a collection would). Views:
- ``centre`` (today, the control); ``centre256`` ... ``centre352``: a larger centre crop (FixRes, Touvron et al.
  2019: a model trained on random resized crops reads larger test crops better); their reranker tokens and caption
  words come from their own grid, average-pooled to the 7x7 the reranker reads;
- ``flip``: the mean of the photo's and its mirror image's unit vectors (test-time augmentation);
- ``flip@K``: a cheaper second view, the tower's activations mirrored at the input of block K (only blocks K: run
  twice);
- ``squash`` (the whole photo resized to 224x224), ``thirds`` (mean of the left, centre and right squares),
  ``centre+squash``: for photos that are not square; Flickr8k's copies here are already 224x224, so there they equal
  ``centre``.
Views of more than one crop keep the centre crop's reranker tokens and words. Prints RSUM per view and its photo
encoding cost against the centre crop.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from crossmodal.encoders import load_encoder
from crossmodal.encoders.base import normalize
from crossmodal.encoders.lite import WEIGHTS, LiteEncoder
from crossmodal.encoders.lite_spec import preprocess_array
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.evaluation.runner import embed_dataset, pipeline_scores
from crossmodal.search.normalise import find_bank
from crossmodal.search.pipeline import Ranking
from crossmodal.search.rerank import find_reranker
from crossmodal.sources.datasets import load_dataset
from crossmodal.sources.images import load_image

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"


def squares(image: Image.Image) -> list[Image.Image]:
    """The left (or top), centre and right (or bottom) squares of side min(w, h)."""
    w, h = image.size
    side = min(w, h)
    starts = [0, (max(w, h) - side) // 2, max(w, h) - side]
    return [image.crop((s, 0, s + side, side) if w >= h else (0, s, side, s + side)) for s in starts]


VIEWS: dict[str, Callable[[Image.Image], list[tuple[Image.Image, int]]]] = {
    "centre": lambda im: [(im, 224)],
    "squash": lambda im: [(im.resize((224, 224), Image.BICUBIC), 224)],
    "flip": lambda im: [(im, 224), (ImageOps.mirror(im), 224)],
    "thirds": lambda im: [(s, 224) for s in squares(im)],
    "centre+squash": lambda im: [(im, 224), (im.resize((224, 224), Image.BICUBIC), 224)],
    **{f"centre{n}": partial(lambda im, n: [(im, n)], n=n) for n in (256, 288, 320, 352)},
}


PARTIAL_FLIPS = [f"flip@{k}" for k in (0, 4, 8, 11, 13, 15)]


@torch.inference_mode()
def partial_flip(model: LiteEncoder, photos: list[Path], start: int, batch: int = 32) -> np.ndarray:
    """The mean of each photo's vector and that of its tower activations mirrored at the input of block ``start``
    (only blocks ``start:`` run twice: a cheaper second view than the mirrored photo's)."""
    image, out = model.towers.image, []
    for lo in range(0, len(photos), batch):
        pixels = torch.stack([model.prepare_image(load_image(p)) for p in photos[lo:lo + batch]])
        x = image.forward_blocks(image.forward_stem(pixels.contiguous(memory_format=torch.channels_last)), 0, start)
        views = [normalize(model.heads.image(image.forward_head(image.forward_blocks(v, start))).numpy())
                 for v in (x, x.flip(-1))]
        out.append(normalize(views[0] + views[1]))
    return np.concatenate(out)


def encode_view(model: LiteEncoder, photos: list[Path], view: str, batch: int = 32, reranker=None
                ) -> tuple[np.ndarray, float, np.ndarray | None, np.ndarray | None]:
    """Each photo's vector in ``view`` (the mean of its crops' unit vectors, unit length), seconds per photo, and
    for a one-crop view with a ``reranker``, its photo tokens and caption words from that crop's grid (pooled to
    the 7x7 grid the reranker reads)."""
    out, start = [], time.perf_counter()
    if view in PARTIAL_FLIPS:
        vectors = partial_flip(model, photos, int(view.split("@")[1]), batch)
        return vectors, (time.perf_counter() - start) / len(photos), None, None
    if reranker is not None and len(VIEWS[view](Image.new("RGB", (8, 8)))) == 1:
        tokens, words = [], []
        for lo in range(0, len(photos), batch):
            prepared = [torch.from_numpy(preprocess_array(*VIEWS[view](load_image(p))[0]))
                        for p in photos[lo:lo + batch]]
            vectors, grid = model.encode_prepared_grids(prepared)
            grid = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(grid), 7).numpy()
            out.append(vectors)
            tokens.append(reranker.photo_tokens(grid))
            words.append(reranker.photo_words(grid))
        return (np.concatenate(out), (time.perf_counter() - start) / len(photos), np.concatenate(tokens),
                np.concatenate(words))
    for lo in range(0, len(photos), batch):
        crops = [VIEWS[view](load_image(p)) for p in photos[lo:lo + batch]]
        by_size: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, parts in enumerate(crops):
            for image, size in parts:
                by_size.setdefault(size, []).append((i, preprocess_array(image, size)))
        sums = np.zeros((len(crops), model.dim), dtype=np.float32)
        for items in by_size.values():
            vectors = normalize(model._encode_images([torch.from_numpy(a) for _, a in items]))
            np.add.at(sums, [i for i, _ in items], vectors)
        out.append(normalize(sums))
    return np.concatenate(out), (time.perf_counter() - start) / len(photos), None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=[*VIEWS, *PARTIAL_FLIPS])
    args = parser.parse_args()
    torch.set_num_threads(2)
    encoder = load_encoder("lite")
    bank, reranker = find_bank(encoder.fingerprint), find_reranker(encoder.fingerprint)
    emb = embed_dataset(encoder, load_dataset(args.dataset, args.split), progress=False, reranker=reranker)
    model = LiteEncoder(WEIGHTS)
    rankings = {"dense": Ranking(norm=False, rerank=0, retriever="dense"),
                "+ norm": Ranking(rerank=0, retriever="dense"), "default": Ranking()}
    print(f"| view | {' | '.join(rankings)} | t2i / i2t (default) | ms/photo | x centre |")
    print("|---" * (len(rankings) + 5) + "|")
    base = None
    for view in ["centre", *[v for v in args.views if v != "centre"]]:
        images, seconds, tokens, words = encode_view(model, list(emb.data.images), view, reranker=reranker)
        seen = replace(emb, images=images, photo_queries=None) if tokens is None else \
            replace(emb, images=images, photo_queries=None, photo_tokens=tokens, photo_words=words)
        base = base or seconds
        cells = []
        for ranking in rankings.values():
            m = evaluate_embeddings(images, emb.texts, emb.data.text_image,
                                    pipeline_scores(encoder, seen, ranking, bank,
                                                    reranker)).metrics()
            cells.append(f"{m['rsum']:.2f}")
        t2i = sum(m[f"t2i_R@{k}"] for k in (1, 5, 10))
        print(f"| {view} | {' | '.join(cells)} | {t2i:.2f} / {m['rsum'] - t2i:.2f} | {1000 * seconds:.1f} | "
              f"{seconds / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
