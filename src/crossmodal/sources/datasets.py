"""Image-caption datasets: the shared Flickr8k layout (images/, captions.tsv, splits/)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class CaptionDataset:
    """Photos and captions of one split; ``text_image[j]`` is the photo index of caption ``j``."""

    name: str
    images: list[Path]
    texts: list[str]
    text_image: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def load_flickr_layout(root: str | Path, split: str) -> CaptionDataset:
    """Read ``root/splits/{split}.txt`` and the captions of those photos from ``root/captions.tsv``."""
    root = Path(root)
    split_file = root / "splits" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"no split file {split_file}")
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
    return CaptionDataset(
        name=f"{root.name}/{split}",
        images=[root / "images" / n for n in names],
        texts=texts,
        text_image=np.asarray(owners, dtype=np.int64),
    )
