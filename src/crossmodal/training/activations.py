"""Cached tower activations at a cut point, so training the layers above the cut skips the frozen prefix.

Photos: the input of EfficientNet-Lite block ``image_cut`` (N, views, C, H, W) in float16, for several
augmented views of each photo (view 0 is the plain photo, view 1 its mirror image, the rest random
resized crops, mirrored at random). Captions: the input of MiniLM layer ``text_cut`` for each token,
concatenated (tokens, 384) in float16 with per-caption offsets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from ..encoders.lite import LiteTowers
from ..search.rerank import pad_states
from ..sources.datasets import CaptionDataset
from ..sources.images import load_image

CACHE_VERSION = 2
FIELDS = ("images", "mirrored", "tokens", "offsets", "text_image")


@dataclass
class Activations:
    """Cached activations of one split: photos (N, views, C, H, W) and caption tokens with offsets."""

    images: np.ndarray
    mirrored: np.ndarray
    tokens: np.ndarray
    offsets: np.ndarray
    text_image: np.ndarray

    def text_batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded hidden states (B, L, D) and attention mask (B, L) of captions ``idx``."""
        hidden, mask = pad_states([self.tokens[self.offsets[j]:self.offsets[j + 1]] for j in idx])
        return torch.from_numpy(hidden), torch.from_numpy(mask)

    def image_batch(self, idx: np.ndarray, views: np.ndarray | None = None) -> torch.Tensor:
        """Activations (B, C, H, W) of photos ``idx``, view 0 unless ``views`` says otherwise."""
        views = np.zeros(len(idx), dtype=np.int64) if views is None else views
        return torch.from_numpy(self.images[idx, views].astype(np.float32))


def photo_views(image: Image.Image, n_views: int, rng: np.random.Generator) -> list[tuple[Image.Image, bool]]:
    """(view, mirrored) pairs: the plain photo, its mirror image, then random resized crops (35-100% of the
    area), mirrored at random. Mirrored views must not be paired with captions that say left or right."""
    views = [(image, False), (ImageOps.mirror(image), True)][:n_views]
    w, h = image.size
    while len(views) < n_views:
        area = rng.uniform(0.35, 1.0) * w * h
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, round(np.sqrt(area * ratio))), min(h, round(np.sqrt(area / ratio)))
        left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = image.crop((left, top, left + cw, top + ch))
        mirror = bool(rng.random() < 0.5)
        views.append((ImageOps.mirror(crop) if mirror else crop, mirror))
    return views


@torch.inference_mode()
def compute_activations(towers: LiteTowers, data: CaptionDataset, image_cut: int, text_cut: int, n_views: int = 1,
                        seed: int = 0, batch_size: int = 32) -> Activations:
    """Run the frozen prefixes of both towers (photo blocks before ``image_cut``, caption layers before
    ``text_cut``) over ``data`` once, on the towers' device."""
    rng = np.random.default_rng(seed)
    device = towers.device
    chunks, mirrored = [], []
    for start in tqdm(range(0, len(data.images), batch_size), desc=f"{data.name} photos", unit="batch"):
        photos = [load_image(p) for p in data.images[start:start + batch_size]]
        views = [v for im in photos for v in photo_views(im, n_views, rng)]
        mirrored.append(np.array([m for _, m in views]).reshape(len(photos), n_views))
        pixels = towers.pixels([v for v, _ in views]).to(device)
        out = towers.image.forward_blocks(towers.image.forward_stem(pixels), 0, image_cut)
        chunks.append(out.to(torch.float16).cpu().reshape(len(photos), n_views, *out.shape[1:]).numpy())
    images = np.concatenate(chunks)
    tokens, lengths = [], []
    for start in tqdm(range(0, len(data.texts), 256), desc=f"{data.name} captions", unit="batch"):
        enc = towers.tokenize(data.texts[start:start + 256]).to(device)
        hidden = towers.text_layers(towers.text_embeddings(enc), enc["attention_mask"], 0, text_cut)
        hidden = hidden.to(torch.float16).cpu()
        for row, n in zip(hidden, enc["attention_mask"].sum(1).tolist(), strict=True):
            tokens.append(row[:n].numpy())
            lengths.append(n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Activations(images, np.concatenate(mirrored), np.concatenate(tokens), offsets, data.text_image)


def cached_activations(towers: LiteTowers, data: CaptionDataset, folder: Path, image_cut: int, text_cut: int,
                       n_views: int = 1, seed: int = 0) -> Activations:
    """Load the activations of ``data`` from ``folder`` or compute and store them there (atomically)."""
    key = {"version": CACHE_VERSION, "image_cut": image_cut, "text_cut": text_cut, "views": n_views, "seed": seed,
           "images": len(data.images), "texts": len(data.texts)}
    meta = folder / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()) == key:
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in FIELDS}
        if np.array_equal(arrays["text_image"], data.text_image):
            return Activations(**arrays)
    acts = compute_activations(towers, data, image_cut, text_cut, n_views, seed)
    folder.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)
    for name in FIELDS:
        tmp = folder / f"{name}.tmp.npy"
        np.save(tmp, getattr(acts, name))
        tmp.replace(folder / f"{name}.npy")
    meta.write_text(json.dumps(key))
    return acts
