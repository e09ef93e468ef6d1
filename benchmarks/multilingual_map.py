"""Probe: can the multilingual tower, trained into v4's space, follow a retrained lite through one orthogonal map?

    python benchmarks/multilingual_map.py runs/towers-mem/lite.safetensors

The map is orthogonal Procrustes from v4's vectors to the new model's, fitted on every Flickr8k `train` photo (plain
view) and caption (`train_multilingual.procrustes`, which `--from-tower` fits its rotation with); the tower's vectors
are mapped and renormalised, nothing is trained. Prints, on Multi30K task 1 dev (934 photos, one caption each in
English, German, French and Czech, translations of each other), text -> photo R@10 of the dual encoders alone: the
tower against v4's photos, the mapped tower against the new model's, and each model's own English tower.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from distill_towers import VIEWS, activations, model_vectors

from crossmodal.encoders import load_encoder
from crossmodal.encoders.base import normalize
from crossmodal.encoders.lite import WEIGHTS, LiteTowers
from crossmodal.sources.datasets import load_dataset
from crossmodal.sources.images import load_image
from crossmodal.training.train_multilingual import procrustes

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def recall_at_10(queries: np.ndarray, photos: np.ndarray, owner: np.ndarray) -> float:
    top = np.argsort(-(queries @ photos.T), axis=1)[:, :10]
    return 100 * float((top == owner[:, None]).any(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="the retrained lite's weights file")
    parser.add_argument("--cache", default="runs/cache", help="where distill_towers.py keeps the train activations")
    args = parser.parse_args()
    train = load_dataset(str(SHARED / "flickr8k"), "train")
    acts = activations(LiteTowers(), train, Path(args.cache), VIEWS)
    (old_photos, old_texts), (new_photos, new_texts) = (model_vectors(w, acts) for w in (WEIGHTS, Path(args.weights)))
    rotation = procrustes(np.concatenate([old_photos, old_texts]), np.concatenate([new_photos, new_texts]))
    print("mean cosine of v4's train vectors, mapped, with the new model's: photos "
          f"{((old_photos @ rotation) * new_photos).sum(1).mean():.4f}, captions "
          f"{((old_texts @ rotation) * new_texts).sum(1).mean():.4f}")
    with (SHARED / "multi30k-flickr8k" / "captions.tsv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                if r["split"] == "dev" and r["source"] == "task1"]
    photos = sorted({r["image"] for r in rows})
    index = {p: i for i, p in enumerate(photos)}
    shipped, student = load_encoder("lite"), load_encoder(args.weights, multilingual=False)
    images = [load_image(SHARED / "flickr8k" / "images" / p) for p in photos]
    v4_dev, new_dev = (np.concatenate([e.encode_images(images[s:s + 64]) for s in range(0, len(images), 64)])
                       for e in (shipped, student))
    print("| language | tower, v4 photos | tower mapped, new photos | v4's English tower | new English tower |")
    print("|---|---|---|---|---|")
    for lang in ("en", "de", "fr", "cs"):
        texts = [r["caption"] for r in rows if r["lang"] == lang]
        owner = np.array([index[r["image"]] for r in rows if r["lang"] == lang])
        tower = shipped.multilingual.encode(texts)
        cells = [recall_at_10(tower, v4_dev, owner), recall_at_10(normalize(tower @ rotation), new_dev, owner)]
        if lang == "en":
            cells += [recall_at_10(shipped.encode_texts(texts), v4_dev, owner),
                      recall_at_10(student.encode_texts(texts), new_dev, owner)]
        print(f"| {lang} | " + " | ".join(f"{c:.1f}" for c in cells) + " |" + " |" * (4 - len(cells)), flush=True)


if __name__ == "__main__":
    main()
