"""Short queries (1-3 words) in English, German, French and Czech: which text tower should read them.

    python benchmarks/short_queries.py [--per-set 400]

lid.176 cannot tell the language of a lone word ("hund" and "dog" get the same English prior), so a one-word query
is English only when lid.176 says so and lite's vocabulary holds the word whole (encoders/languages.py).
This measures that rule against lid.176 alone, on Flickr8k `dev` photos: the queries are words and 2- and 3-word
runs of the dev captions (Flickr8k's English ones; Multi30K's German, French and Czech ones for the same photos)
found in the captions of 3 to 150 photos, and a photo is relevant when one of its captions in that language holds
the query. Prints precision@10 (normalised dense scores, each tower against its own bank, as the pipeline's first
stage ranks them) through lite's English tower, through the multilingual tower, and routed by either rule, with the
share each rule sends to the English tower. With Faker installed, also how many lone words of other languages each
rule sends to the English tower.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from distil_texts import faker_locales

from crossmodal.encoders import load_encoder
from crossmodal.encoders.languages import likely_english
from crossmodal.evaluation.runner import embed_dataset
from crossmodal.search.normalise import find_bank
from crossmodal.sources.datasets import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def queries(captions: dict[int, list[str]], words: int, count: int) -> tuple[list[str], list[set[int]]]:
    """Up to ``count`` runs of ``words`` words (one of them of 4 letters or more) with the photos whose captions hold
    them, for runs held by 3 to 150 photos; drawn with seed 0."""
    owners: dict[str, set[int]] = defaultdict(set)
    for photo, texts in captions.items():
        for text in texts:
            tokens = re.findall(r"[^\W\d_]+", text.lower())
            for i in range(len(tokens) - words + 1):
                run = tokens[i:i + words]
                if max(map(len, run)) >= 4:
                    owners[" ".join(run)].add(photo)
    kept = sorted(q for q, photos in owners.items() if 3 <= len(photos) <= 150)
    drawn = random.Random(0).sample(kept, min(count, len(kept)))
    return drawn, [owners[q] for q in drawn]


def precision_at_10(vectors: np.ndarray, photos: np.ndarray, biases: np.ndarray, share: float,
                    relevant: list[set[int]]) -> np.ndarray:
    top = np.argsort(-(vectors @ photos.T - share * biases[None]), axis=1)[:, :10]
    return np.array([len(set(row.tolist()) & right) / 10 for row, right in zip(top, relevant, strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-set", type=int, default=400)
    args = parser.parse_args()
    encoder = load_encoder("lite")
    tower = encoder.multilingual
    if tower is None or tower.bank is None:
        raise SystemExit("lite has no multilingual tower with a bank here")
    data = load_dataset(SHARED / "flickr8k", "dev")
    photos = embed_dataset(encoder, data, progress=False).images
    bank = find_bank(encoder.fingerprint)
    own_bias, tower_bias = bank.biases("image", photos), tower.bank.biases("image", photos)
    captions: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for text, photo in zip(data.texts, data.text_image, strict=True):
        captions["en"][int(photo)].append(text)
    index = {Path(p).name: i for i, p in enumerate(data.images)}
    with (SHARED / "multi30k-flickr8k" / "captions.tsv").open(newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["split"] == "dev" and row["lang"] in ("de", "fr", "cs") and row["image"] in index:
                captions[row["lang"]][index[row["image"]]].append(row["caption"])
    print("| language | words | queries | English tower | multilingual tower | lid.176 alone (to English) "
          "| lid.176 + vocabulary (to English) |")
    print("|---|---|---|---|---|---|---|")
    for lang, words in ((lang, n) for lang in ("en", "de", "fr", "cs") for n in (1, 2, 3)):
        texts, relevant = queries(captions[lang], words, args.per_set)
        own = precision_at_10(encoder._run(encoder._encode_texts, texts), photos, own_bias, bank.share, relevant)
        multi = precision_at_10(tower.encode(texts), photos, tower_bias, tower.bank.share, relevant)
        cells = []
        for english in (likely_english(texts), ~encoder.foreign(texts)):
            cells.append(f"{100 * np.where(english, own, multi).mean():.1f} ({100 * english.mean():.0f}%)")
        print(f"| {lang} | {words} | {len(texts)} | {100 * own.mean():.1f} | {100 * multi.mean():.1f} | "
              + " | ".join(cells) + " |", flush=True)
    other_languages(encoder)


def other_languages(encoder) -> None:
    """With Faker installed (not a dependency): the share of its word lists' lone words in languages the tower never
    trained on that each rule sends to the English tower (no photos to score them against)."""
    try:
        from faker import Faker
    except ImportError:
        print("\n(pip install faker to also count lone words of other languages)")
        return
    locales = faker_locales(("en", "la", "de", "fr", "cs"))
    words = []
    for locale in locales:
        fake = Faker(locale)
        fake.seed_instance(0)
        words += list(dict.fromkeys(fake.word() for _ in range(40)))
    print(f"\n{len(words)} lone words of Faker's word lists in {len(locales)} other languages ({', '.join(locales)}): "
          f"to the English tower by lid.176 alone {100 * likely_english(words).mean():.1f}%, with the vocabulary "
          f"{100 * (~encoder.foreign(words)).mean():.1f}%")


if __name__ == "__main__":
    main()
