"""Frozen-tower features of a caption dataset, computed once and cached on disk for head training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..encoders.lite import LiteTowers
from ..sources.datasets import CaptionDataset
from ..sources.images import load_image


@torch.inference_mode()
def tower_features(towers: LiteTowers, data: CaptionDataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(image features (N, 1280), text features (M, 384)) of every photo and caption in ``data``."""
    images = []
    for start in tqdm(range(0, len(data.images), batch_size), desc=f"{data.name} photos", unit="batch"):
        batch = [load_image(p) for p in data.images[start:start + batch_size]]
        images.append(towers.image_features(towers.pixels(batch)).numpy())
    texts = []
    for start in tqdm(range(0, len(data.texts), 256), desc=f"{data.name} captions", unit="batch"):
        texts.append(towers.text_features(towers.tokenize(data.texts[start:start + 256])).numpy())
    return np.concatenate(images), np.concatenate(texts)


def cached_features(towers: LiteTowers, data: CaptionDataset, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load features from ``cache`` or compute and store them there (atomically)."""
    if cache.is_file():
        with np.load(cache) as f:
            if f["text_image"].shape == data.text_image.shape and (f["text_image"] == data.text_image).all():
                return f["images"], f["texts"]
    images, texts = tower_features(towers, data)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, images=images, texts=texts, text_image=data.text_image)
    tmp.replace(cache)
    return images, texts
