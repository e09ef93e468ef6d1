"""Training task for transformers dual encoders: the projection heads, optionally the last N layers of
each tower or LoRA adapters (peft) on their attention, trained end to end on decoded photos; the result is
a plain ``save_pretrained`` folder (adapters merged into the weights)."""

from __future__ import annotations

import copy
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
# the attention query and value projections, as CLIP/SigLIP (q_proj, v_proj) and BERT-style towers name them
LORA_TARGETS = ("q_proj", "v_proj", "query", "value")


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


def add_lora(model: nn.Module, rank: int) -> list[str]:
    """Add rank-``rank`` LoRA adapters (alpha = 2 x rank) to the attention query and value projections of
    both towers and train them with whatever sits outside the towers; the towers' own weights stay frozen.
    Returns the trainable parameter names."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:
        raise ValueError("--unfreeze lora:R needs peft: pip install 'crossmodal[lora]'") from e
    targets = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith(TOWERS)
               and name.rsplit(".", 1)[-1] in LORA_TARGETS]
    if not targets:
        raise ValueError(f"a {model.config.model_type!r} model has no attention projections named "
                         f"{', '.join(LORA_TARGETS)} for LoRA; use --unfreeze last:N")
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets), model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or (not name.startswith(TOWERS) and "logit" not in name))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LoRA adapter merged into the layer it adapts and removed, so it saves
    and loads as the plain transformers model."""
    from peft.tuners.lora import LoraLayer

    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    return model


class HFTask:
    """A transformers dual encoder fine-tuned on a caption dataset (photos decoded each step): the last
    ``last`` layers of each tower, or LoRA adapters of rank ``lora`` when it is above 0."""

    def __init__(self, encoder: HFDualEncoder, train: CaptionDataset, dev: CaptionDataset, last: int,
                 lora: int = 0) -> None:
        self.encoder, self.dev = encoder, dev
        self.module = encoder.model
        if lora:
            add_lora(self.module, lora)
        else:
            unfreeze(self.module, last)
        self.lora = lora
        self.train_data = train
        self.train_text_image = np.asarray(train.text_image)

    def param_groups(self, lr: float, tower_lr: float) -> list[dict[str, Any]]:
        """The heads at ``lr``, tower layers or LoRA adapters at ``tower_lr``."""
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
        (merged_copy(self.module) if self.lora else self.module).save_pretrained(tmp)
        self.encoder.tokenizer.save_pretrained(tmp)
        self.encoder.image_processor.save_pretrained(tmp)
        for path in tmp.iterdir():
            path.replace(out / path.name)
        tmp.rmdir()
