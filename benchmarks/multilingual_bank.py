"""The multilingual tower's own normalisation bank: which reference captions, k and share, chosen on Multi30K dev.

    python benchmarks/multilingual_bank.py [--table ../shared/datasets/multi30k-flickr8k/captions.tsv] [--write]

The photos' biases normalise a query's scores (search/normalise.py); the model's bank holds its own vectors of
English captions. Queries the multilingual tower encodes (German, French, Czech, ...) are another distribution.
This builds the tower's bank from its vectors of `train` captions that are not English (task 1, 3,000 drawn with
seed 0: `encoders/multilingual.build_bank`) and prints, on the `dev` photos and task-1 captions, text->image
R@1/5/10 per language with no normalisation, the model's bank, and the tower's at several k and shares. English
queries take the model's own tower and bank either way. ``--write`` saves the bank beside the shipped tower (the
k and share it is saved with are the model bank's, unless ``--share`` says otherwise).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from crossmodal.encoders import load_encoder
from crossmodal.encoders.multilingual import bank_path, build_bank
from crossmodal.search.normalise import Bank, find_bank
from crossmodal.sources.images import load_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
LANGS = ("en", "de", "fr", "cs")


def recalls(queries: np.ndarray, gold: np.ndarray, photos: np.ndarray, bias: np.ndarray, share: float) -> list[float]:
    """Text->image R@1/5/10 (%) of ``queries`` whose right photo is ``gold``, by the normalised score."""
    scores = queries @ photos.T - share * bias[None]
    rank = (scores > scores[np.arange(len(queries)), gold][:, None]).sum(1)
    return [100 * float(np.mean(rank < k)) for k in (1, 5, 10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=SHARED / "multi30k-flickr8k" / "captions.tsv")
    parser.add_argument("--write", action="store_true", help="save the bank beside the tower")
    parser.add_argument("--share", type=float, help="the share --write saves (default: the model bank's)")
    args = parser.parse_args()
    with args.table.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    encoder = load_encoder("lite", int8_text=True)
    tower = encoder.multilingual
    train = [r["caption"] for r in rows if r["split"] == "train" and r["source"] == "task1" and r["lang"] != "en"]
    built = build_bank(tower.encode, train, tower.weights)
    dev = [r for r in rows if r["split"] == "dev" and r["source"] == "task1"]
    names = sorted({r["image"] for r in dev})
    where = {name: i for i, name in enumerate(names)}
    images = args.table.parent / "../flickr8k/images"
    photos = np.concatenate([encoder.encode_images([load_image(images / n) for n in names[i:i + 64]])
                             for i in range(0, len(names), 64)])
    queries = {}
    for lang in LANGS:
        texts = [r["caption"] for r in dev if r["lang"] == lang]
        vectors = encoder.encode_texts(texts) if lang == "en" else tower.encode(texts)
        queries[lang] = (vectors, np.array([where[r["image"]] for r in dev if r["lang"] == lang]))
    model_bank = find_bank(encoder.fingerprint)
    table = Table(title=f"Multi30K dev task 1 ({len(names)} photos): text->image R@1 / R@5 / R@10 by query bank; "
                        f"tower bank: {len(built.vectors('texts'))} train captions (de, fr, cs)")
    table.add_column("normalisation")
    for lang in LANGS:
        table.add_column(lang, justify="right")
    table.add_column("mean R@10 de/fr/cs", justify="right")
    k_model, share_model = model_bank.top_k, model_bank.share
    settings = [("none", model_bank, k_model, 0.0),
                (f"model's bank, k {k_model}, share {share_model}", model_bank, k_model, share_model)]
    settings += [(f"tower's bank, k {k}, share {share}", built, k, share) for k in (32, 64, 128)
                 for share in (0.5, 0.75, 1.0)]
    english = recalls(*queries["en"], photos, Bank(model_bank.vectors("texts"), np.zeros((0, photos.shape[1])), "",
                                                   top_k=k_model).biases("image", photos), share_model)
    for name, bank, k, share in settings:
        bias = Bank(bank.vectors("texts"), np.zeros((0, photos.shape[1])), "", top_k=k).biases("image", photos)
        cells = [english] + [recalls(*queries[lang], photos, bias, share) for lang in LANGS[1:]]
        table.add_row(name, *(" / ".join(f"{v:.1f}" for v in c) for c in cells),
                      f"{np.mean([c[2] for c in cells[1:]]):.2f}")
    Console(width=200).print(table)
    if args.write:
        path = bank_path(tower.weights.path)
        Bank(built.vectors("texts"), built.vectors("images"), built.fingerprint, top_k=k_model,
             share=share_model if args.share is None else args.share).save(path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
