"""Training tasks for ``lite``: heads on cached pooled features (seconds per epoch), then heads plus the
last tower blocks on cached activations. Running the first to initialise the second is linear probing
then fine-tuning (LP-FT, Kumar et al. 2022): fresh heads would otherwise push large, noisy gradients
into the pretrained blocks.
"""

from __future__ import annotations

import re
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


def _decay_groups(module: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only, not on biases, LayerNorms or learnable scalars."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "lr": lr},
            {"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0}]


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
        return _decay_groups(self.module, lr)

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
        groups = _decay_groups(self.module.heads, lr)
        tower = [p for p in self.module.tower_parameters()]
        return groups + [{"params": [p for p in tower if p.ndim >= 2], "lr": tower_lr},
                         {"params": [p for p in tower if p.ndim < 2], "lr": tower_lr, "weight_decay": 0.0}]

    def embed_batch(self, images: np.ndarray, texts: np.ndarray, rng: np.random.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        views = rng.integers(self.train.images.shape[1], size=len(images))
        mirrored = np.asarray(self.train.mirrored)[images, views]
        sided_photos = set(self.train_text_image[texts[self.sided[texts]]].tolist())
        views[mirrored & np.isin(images, list(sided_photos))] = 0  # never mirror a photo whose caption says left/right
        image_emb = self.module.embed_images(self.train.image_batch(images, views))
        return self.module.embed_texts(*self.train.text_batch(texts)), image_emb

    def dev_metrics(self) -> dict[str, float]:
        images, texts = self.module.embed_split(self.dev)
        return recall_metrics(images, texts, np.asarray(self.dev.text_image))

    def export(self, out: Path, metadata: dict[str, str]) -> None:
        self.module.export(out / WEIGHTS_FILE, metadata)
