"""The trainable part of ``lite``: the last blocks of both towers plus the heads, fed cached activations.

The photo tower trains in its BatchNorm-folded form (each conv has a bias and no BatchNorm), which is
exactly the form inference runs, so a fine-tuned block loads straight into ``LiteTowers`` and small
batches cannot disturb BatchNorm statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.lite import LiteHeads, LiteTowers
from .activations import Activations

TEXT_BUCKET = 32  # captions per length group in text_features


class LiteTrainable(nn.Module):
    """Photo blocks ``image_from:`` + head conv and caption layers ``text_from:`` of the lite towers, with heads,
    fed activations cached at those cuts (the input of block ``image_from`` and of layer ``text_from``)."""

    def __init__(self, towers: LiteTowers, heads: LiteHeads, image_blocks: int, text_layers: int) -> None:
        super().__init__()
        n_blocks, n_layers = len(towers.image._blocks), len(towers.text.encoder.layer)
        if not 0 <= image_blocks <= n_blocks or not 0 <= text_layers <= n_layers:
            raise ValueError(f"lite can unfreeze at most {n_blocks} photo blocks and {n_layers} caption layers")
        self.towers, self.heads = towers, heads.to(towers.device)
        self.image_from, self.text_from = n_blocks - image_blocks, n_layers - text_layers
        towers.requires_grad_(False)
        self.tower_modules = [*towers.image._blocks[self.image_from:], *towers.text.encoder.layer[self.text_from:]]
        if image_blocks:
            self.tower_modules.append(towers.image._conv_head)
        for module in self.tower_modules:
            module.requires_grad_(True)

    def tower_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.tower_modules for p in m.parameters()]

    def train(self, mode: bool = True) -> LiteTrainable:
        """Only the unfrozen tower modules and the heads switch to training mode (dropout)."""
        super().train(False)
        for module in [*self.tower_modules, self.heads]:
            module.train(mode)
        return self

    def image_features(self, acts: torch.Tensor) -> torch.Tensor:
        """Pooled photo features (B, 1280) from the cached input of block ``image_from``."""
        acts = acts.to(self.towers.device).contiguous(memory_format=torch.channels_last)
        image = self.towers.image
        return image.forward_head(image.forward_blocks(acts, self.image_from))

    def text_features(self, hidden: torch.Tensor, mask: torch.Tensor, bucket: int = TEXT_BUCKET) -> torch.Tensor:
        """Mean-pooled, normalised caption features (B, 384) from the cached input of layer ``text_from``.

        Captions run in groups of ``bucket`` of similar length, each padded only to its own longest caption:
        a batch padded to its longest caption is about half padding on Flickr8k, which doubled the cost."""
        lengths = mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        out = torch.empty(len(order), hidden.shape[-1], device=self.towers.device)
        for idx in order.split(bucket):
            n = int(lengths[idx].max())
            h, m = hidden[idx, :n].to(self.towers.device), mask[idx, :n].to(self.towers.device)
            h = self.towers.text_layers(h, m, self.text_from)
            m = m.unsqueeze(-1).to(h.dtype)
            out[idx.to(out.device)] = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(out, dim=-1)

    def embed_images(self, acts: torch.Tensor) -> torch.Tensor:
        return self.heads.image(self.image_features(acts))

    def embed_texts(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.heads.text(self.text_features(hidden, mask))

    @torch.inference_mode()
    def split_features(self, acts: Activations, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Tower features (photo view 0, every caption) of a whole split, in the module's current mode."""
        n_images, n_texts = len(acts.images), len(acts.offsets) - 1
        images = [self.image_features(acts.image_batch(np.arange(s, min(s + batch_size, n_images))))
                  for s in range(0, n_images, batch_size)]
        texts = [self.text_features(*acts.text_batch(np.arange(s, min(s + batch_size, n_texts))))
                 for s in range(0, n_texts, batch_size)]
        return torch.cat(images), torch.cat(texts)

    @torch.inference_mode()
    def embed_split(self, acts: Activations) -> tuple[np.ndarray, np.ndarray]:
        """Normalised (photo, caption) embeddings of a whole split in evaluation mode, for dev evaluation."""
        was_training = self.heads.training
        self.train(False)
        images, texts = self.split_features(acts)
        out = (F.normalize(self.heads.image(images), dim=-1).cpu().numpy(),
               F.normalize(self.heads.text(texts), dim=-1).cpu().numpy())
        self.train(was_training)
        return out

    def export(self, path: Path, metadata: dict[str, str]) -> None:
        """Write heads plus every unfrozen tower tensor (float16) to one safetensors file, atomically."""
        tuned = {n: p.to(torch.float16).cpu() for n, p in self.towers.named_parameters() if p.requires_grad}
        self.heads.save(path, metadata, towers=tuned)
