"""Image-caption datasets for evaluation and training, in three layouts.

- the shared Flickr8k layout: a folder with ``images/``, ``captions.tsv`` and ``splits/{split}.txt``;
- Karpathy JSON (``dataset_flickr8k.json``, ``dataset_flickr30k.json``, ``dataset_coco.json``),
  written ``karpathy:/path/to/dataset_coco.json``; images are looked up under ``--images`` (default:
  the JSON's folder), joined with each entry's ``filepath`` (COCO) and ``filename``;
- a plain table (``.csv``, ``.tsv``, ``.jsonl``) with ``image`` and ``caption`` columns, and optionally
  ``split``, ``lang`` and ``group`` (captions that say the same thing in several languages share a
  group; used for MRV). Image paths are relative to the table's folder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .captions import read_captions

KARPATHY_SPLITS = {"dev": "val", "validation": "val"}


@dataclass
class CaptionDataset:
    """Photos and captions of one split; ``text_image[j]`` is the photo index of caption ``j``."""

    name: str
    images: list[Path]
    texts: list[str]
    text_image: np.ndarray
    langs: list[str] | None = None
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset_images(self, keep: np.ndarray) -> CaptionDataset:
        """The dataset restricted to photos where ``keep`` is True, with their captions."""
        new_index = np.cumsum(keep) - 1
        texts = np.flatnonzero(keep[self.text_image])
        pick = (lambda xs: [xs[j] for j in texts]) if len(texts) else (lambda xs: [])
        return CaptionDataset(
            name=self.name,
            images=[p for p, k in zip(self.images, keep, strict=True) if k],
            texts=pick(self.texts),
            text_image=new_index[self.text_image[texts]],
            langs=pick(self.langs) if self.langs else None,
            groups=pick(self.groups) if self.groups else None,
        )


def load_dataset(spec: str | Path, split: str = "test", images: str | Path | None = None) -> CaptionDataset:
    """Load ``split`` of a dataset given as a Flickr-layout folder, ``karpathy:FILE.json`` or a table."""
    spec = str(spec)
    if spec.startswith("karpathy:") or spec.endswith(".json"):
        return load_karpathy(Path(spec.removeprefix("karpathy:")), split, images)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_flickr_layout(path, split)
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        return load_table(path, split, images)
    raise FileNotFoundError(
        f"{spec}: not a dataset folder (images/, captions.tsv, splits/), a karpathy:FILE.json or a "
        ".csv/.tsv/.jsonl table"
    )


def load_flickr_layout(root: str | Path, split: str) -> CaptionDataset:
    """Read ``root/splits/{split}.txt`` and the captions of those photos from ``root/captions.tsv``."""
    root = Path(root)
    split_file = root / "splits" / f"{split}.txt"
    if not split_file.is_file():
        known = sorted(p.stem for p in (root / "splits").glob("*.txt"))
        raise FileNotFoundError(f"no split {split!r} in {root} (has: {', '.join(known) or 'none'})")
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    index = {name: i for i, name in enumerate(names)}
    texts: list[str] = []
    owners: list[int] = []
    with (root / "captions.tsv").open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader, None)
        for row in reader:
            if len(row) >= 2 and row[0] in index and row[1].strip():
                texts.append(row[1].strip())
                owners.append(index[row[0]])
    return CaptionDataset(f"{root.name}/{split}", [root / "images" / n for n in names], texts,
                          np.asarray(owners, dtype=np.int64))


def load_karpathy(path: Path, split: str, images: str | Path | None = None) -> CaptionDataset:
    """Read one split of a Karpathy-format JSON (``dev`` means its ``val``)."""
    path = path.expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Karpathy JSON file")
    data = json.loads(path.read_text())
    wanted = KARPATHY_SPLITS.get(split, split)
    root = Path(images).expanduser() if images else path.parent
    photos, texts, owners = [], [], []
    for entry in data["images"]:
        if entry.get("split") != wanted:
            continue
        photos.append(root / entry.get("filepath", "") / entry["filename"])
        for sentence in entry["sentences"]:
            raw = sentence.get("raw") or " ".join(sentence.get("tokens", []))
            if raw.strip():
                texts.append(raw.strip())
                owners.append(len(photos) - 1)
    if not photos:
        found = sorted({e.get("split", "?") for e in data["images"]})
        raise ValueError(f"{path}: no images in split {wanted!r} (splits present: {', '.join(found)})")
    return CaptionDataset(f"{data.get('dataset', path.stem)}/{split}", photos, texts,
                          np.asarray(owners, dtype=np.int64))


def load_table(path: Path, split: str, images: str | Path | None = None) -> CaptionDataset:
    """Read an image,caption table; rows are filtered on a ``split`` column when the table has one."""
    records, _ = read_captions(path)
    if any("split" in r.fields for r in records):
        records = [r for r in records if r.fields.get("split") == split]
        if not records:
            raise ValueError(f"{path}: no rows with split={split!r}")
    root = Path(images).expanduser() if images else path.parent
    index: dict[str, int] = {}
    texts, owners, langs, groups = [], [], [], []
    for r in records:
        image = r.fields.get("image")
        if not image:
            raise ValueError(f"{path}:{r.line}: no image column value")
        owners.append(index.setdefault(image, len(index)))
        texts.append(r.text)
        langs.append(str(r.fields.get("lang", "")))
        groups.append(str(r.fields.get("group", image)))
    multilingual = len(set(langs)) > 1
    return CaptionDataset(f"{path.stem}/{split}", [root / name for name in index], texts,
                          np.asarray(owners, dtype=np.int64), langs if multilingual else None,
                          groups if multilingual else None)


def merge_datasets(datasets: list[CaptionDataset], lang: str = "en") -> CaptionDataset:
    """One dataset of several: photos met twice (the same resolved path) kept once; captions of a dataset without
    a ``lang`` column take ``lang``, and each keeps its own group (groups never span datasets)."""
    images: dict[Path, int] = {}
    texts: list[str] = []
    owners: list[int] = []
    langs: list[str] = []
    groups: list[str] = []
    for number, data in enumerate(datasets):
        where = [images.setdefault(p.resolve(), len(images)) for p in data.images]
        texts += data.texts
        owners += [where[i] for i in data.text_image]
        langs += data.langs or [lang] * len(data.texts)
        groups += [f"{number}:{g}" for g in (data.groups or map(str, range(len(data.texts))))]
    return CaptionDataset("+".join(d.name for d in datasets), list(images), texts,
                          np.asarray(owners, dtype=np.int64), langs, groups)
