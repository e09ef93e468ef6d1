"""Training task for transformers dual encoders: the projection heads, optionally the last N layers of
each tower, trained end to end on decoded photos; the result is a ``save_pretrained`` folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..encoders.hf import HFDualEncoder, _features
from ..evaluation.metrics import recall_metrics
from ..evaluation.runner import embed_dataset
from ..sources.datasets import CaptionDataset
from ..sources.images import load_image

TOWERS = ("vision_model", "text_model")


def _layer_list(tower: nn.Module) -> nn.ModuleList:
    """The tower's stack of transformer (or conv) blocks: its longest ModuleList."""
    lists = [m for m in tower.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"cannot find the layer stack of {type(tower).__name__}")
    return max(lists, key=len)


def unfreeze(model: nn.Module, last: int) -> list[str]:
    """Freeze everything, then train what sits outside the towers (projections, temperature) and, when
    ``last`` > 0, the last ``last`` layers of each tower with everything after them (final norms, pooling
    heads). Returns the trainable parameter names."""
    model.requires_grad_(False)
    for name, param in model.named_parameters():
        if not name.startswith(TOWERS) and "logit" not in name:
            param.requires_grad_(True)
    for tower_name in TOWERS:
        tower = getattr(model, tower_name, None)
        if tower is None or last <= 0:
            continue
        layers = _layer_list(tower)
        first_trained = len(layers) - min(last, len(layers))
        layer_ids = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
        seen_layers = False
        for param in tower.parameters():
            index = layer_ids.get(id(param))
            seen_layers |= index is not None
            if (index is not None and index >= first_trained) or (index is None and seen_layers):
                param.requires_grad_(True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError(f"a {model.config.model_type!r} model has no projection heads to train alone; "
                         "use --unfreeze last:N")
    return names


class HFTask:
    """A transformers dual encoder fine-tuned on a caption dataset (photos decoded each step)."""

    def __init__(self, encoder: HFDualEncoder, train: CaptionDataset, dev: CaptionDataset, last: int) -> None:
        self.encoder, self.dev = encoder, dev
        self.module = encoder.model
        unfreeze(self.module, last)
        self.train_data = train
        self.train_text_image = np.asarray(train.text_image)

    def param_groups(self, lr: float, tower_lr: float) -> list[dict[str, Any]]:
        heads = [p for n, p in self.module.named_parameters() if p.requires_grad and not n.startswith(TOWERS)]
        tower = [p for n, p in self.module.named_parameters() if p.requires_grad and n.startswith(TOWERS)]
        return [g for g in ({"params": heads, "lr": lr}, {"params": tower, "lr": tower_lr}) if g["params"]]

    def embed_batch(self, images: np.ndarray, texts: np.ndarray, rng: np.random.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        photos = [load_image(self.train_data.images[i]) for i in images]
        pixels = enc.image_processor(images=photos, return_tensors="pt").to(enc.device)
        tokens = enc.tokenizer([self.train_data.texts[j] for j in texts], return_tensors="pt", **enc.text_kwargs)
        text_inputs = {k: v.to(enc.device) for k, v in tokens.items() if k in enc._text_inputs}
        return (_features(self.module.get_text_features(**text_inputs)),
                _features(self.module.get_image_features(**pixels)))

    def dev_metrics(self) -> dict[str, float]:
        emb = embed_dataset(self.encoder, self.dev, progress=False)
        return recall_metrics(emb.images, emb.texts, emb.data.text_image)

    def export(self, out: Path, metadata: dict[str, str]) -> None:
        """Save model, tokenizer and processor into ``out`` through a temporary folder, then move them in."""
        tmp = out / ".export"
        shutil.rmtree(tmp, ignore_errors=True)
        self.module.save_pretrained(tmp)
        self.encoder.tokenizer.save_pretrained(tmp)
        self.encoder.image_processor.save_pretrained(tmp)
        for path in tmp.iterdir():
            path.replace(out / path.name)
        tmp.rmdir()
