"""Training tasks for ``lite``: heads on cached pooled features (seconds per epoch), then heads plus the
last tower blocks on cached activations. Running the first to initialise the second is linear probing
then fine-tuning (LP-FT, Kumar et al. 2022): fresh heads would otherwise push large, noisy gradients
into the pretrained blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.lite import LiteHeads
from ..evaluation.metrics import recall_metrics
from .activations import Activations
from .lite_model import LiteTrainable

SIDED = re.compile(r"\b(left|right)\b", re.IGNORECASE)
WEIGHTS_FILE = "lite.safetensors"


def _decay_groups(params: Iterable[nn.Parameter], lr: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only, not on biases, LayerNorms or learnable scalars."""
    params = [p for p in params if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "lr": lr},
            {"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0}]


def pick_views(mirrored: np.ndarray, images: np.ndarray, no_mirror: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
    """A random cached view per photo (``mirrored``: photos x views); the plain view 0 instead wherever a
    mirrored view was drawn for a photo flagged in ``no_mirror`` (its caption says left or right)."""
    views = rng.integers(mirrored.shape[1], size=len(images))
    views[mirrored[images, views] & no_mirror] = 0
    return views


class FeatureTask:
    """Heads only, on frozen pooled features (photos (N, 1280), captions (M, 384)) kept in memory."""

    def __init__(self, heads: LiteHeads, train: tuple[np.ndarray, np.ndarray, np.ndarray],
                 dev: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.module = heads
        self.images, self.texts = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in train[:2])
        self.train_text_image = np.asarray(train[2])
        self.dev = dev
        for head, feats in ((heads.image, self.images), (heads.text, self.texts)):
            head.mean.copy_(feats.mean(0))
            head.std.copy_(feats.std(0).clamp(min=1e-6))

    def param_groups(self, lr: float, tower_lr: float) -> list[dict[str, Any]]:
        return _decay_groups(self.module.parameters(), lr)

    def embed_batch(self, images: np.ndarray, texts: np.ndarray, rng: np.random.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module.text(self.texts[texts]), self.module.image(self.images[images])

    @torch.inference_mode()
    def dev_metrics(self) -> dict[str, float]:
        self.module.eval()
        images, texts, owner = self.dev
        img = F.normalize(self.module.image(torch.from_numpy(images)), dim=-1).numpy()
        txt = F.normalize(self.module.text(torch.from_numpy(texts)), dim=-1).numpy()
        return recall_metrics(img, txt, owner)

    def export(self, out: Path, metadata: dict[str, str]) -> None:
        self.module.save(out / WEIGHTS_FILE, metadata)


class LiteTask:
    """Heads plus the last photo blocks and caption layers, on cached activations with augmented views."""

    def __init__(self, model: LiteTrainable, train: Activations, dev: Activations, train_texts: list[str]) -> None:
        self.module = model
        self.train, self.dev = train, dev
        self.train_text_image = np.asarray(train.text_image)
        self.sided = np.array([bool(SIDED.search(t)) for t in train_texts])

    def param_groups(self, lr: float, tower_lr: float) -> list[dict[str, Any]]:
        return (_decay_groups(self.module.heads.parameters(), lr)
                + _decay_groups(self.module.tower_parameters(), tower_lr))

    def embed_batch(self, images: np.ndarray, texts: np.ndarray, rng: np.random.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        sided_photos = np.isin(images, self.train_text_image[texts[self.sided[texts]]])
        views = pick_views(np.asarray(self.train.mirrored), images, sided_photos, rng)
        image_emb = self.module.embed_images(self.train.image_batch(images, views))
        return self.module.embed_texts(*self.train.text_batch(texts)), image_emb

    def dev_metrics(self) -> dict[str, float]:
        images, texts = self.module.embed_split(self.dev)
        return recall_metrics(images, texts, np.asarray(self.dev.text_image))

    def export(self, out: Path, metadata: dict[str, str]) -> None:
        self.module.export(out / WEIGHTS_FILE, metadata)
