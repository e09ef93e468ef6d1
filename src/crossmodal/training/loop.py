"""The training loop shared by every trainable model: batches of photos with their captions, a contrastive
loss, AdamW with warm-up and cosine decay, dev evaluation each epoch, early stopping on dev RSUM,
a checkpoint after each epoch that a rerun resumes from, and the best epoch exported.

Runs are reproducible: epoch ``e`` draws its order, captions, views and dropout from ``seed + e``,
so a run resumed at an epoch boundary ends with the same numbers as one never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..collection.atomic import atomic_write_json
from . import losses


class Task(Protocol):
    """A model and its data, as the loop sees them."""

    module: nn.Module  # every trainable parameter lives in here
    train_text_image: np.ndarray  # caption -> photo index of the training split

    def param_groups(self, lr: float, tower_lr: float) -> list[dict[str, Any]]: ...

    def embed_batch(self, images: np.ndarray, texts: np.ndarray, rng: np.random.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-mode (caption, photo) embeddings of caption indices ``texts`` and photo indices ``images``."""

    def dev_metrics(self) -> dict[str, float]: ...

    def export(self, out: Path, metadata: dict[str, str]) -> None: ...


@dataclass
class TrainConfig:
    """Everything that decides a run's numbers; saved with each checkpoint."""

    loss: str = "infonce"
    epochs: int = 10
    batch_size: int = 128
    captions_per_image: int = 1
    lr: float = 1e-3
    tower_lr: float = 1e-4
    weight_decay: float = 0.1
    warmup: float = 0.1
    patience: int = 3
    margin: float = 0.2
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class LossHead(nn.Module):
    """The loss and its learnable parameters: temperature (and SigLIP's bias)."""

    def __init__(self, kind: str, margin: float) -> None:
        super().__init__()
        if kind not in losses.LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(losses.LOSSES)}")
        self.kind, self.margin = kind, margin
        start = (math.log(10), -10.0) if kind == "siglip" else (math.log(1 / 0.07), 0.0)
        self.logit_scale = nn.Parameter(torch.tensor(start[0]))
        self.logit_bias = nn.Parameter(torch.tensor(start[1]), requires_grad=kind == "siglip")

    def forward(self, text: torch.Tensor, image: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        if self.kind == "infonce":
            return losses.infonce(text, image, positive, self.logit_scale)
        if self.kind == "siglip":
            return losses.siglip(text, image, positive, self.logit_scale, self.logit_bias)
        return losses.vsepp(text, image, positive, self.margin)


def epoch_batches(text_image: np.ndarray, config: TrainConfig, rng: np.random.Generator
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(photo indices, caption indices) per step: each photo once, with ``captions_per_image`` random captions."""
    by_image = [np.flatnonzero(text_image == i) for i in range(int(text_image.max()) + 1)]
    photos = [i for i in rng.permutation(len(by_image)) if len(by_image[i])]
    out = []
    for start in range(0, len(photos) - config.batch_size + 1, config.batch_size):
        batch = np.array(photos[start:start + config.batch_size])
        k = config.captions_per_image
        texts = np.concatenate([rng.choice(by_image[i], size=min(k, len(by_image[i])), replace=False) for i in batch])
        out.append((batch, texts))
    return out


def _lr_factor(step: int, total: int, warmup: float) -> float:
    warm = max(1, int(total * warmup))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes: a checkpoint need not repeat the frozen towers."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def fit(task: Task, config: TrainConfig, out: Path, progress: bool = True) -> list[dict[str, Any]]:
    """Train, evaluate each epoch, keep the best epoch exported in ``out``; resumes from
    ``out/training/checkpoint.pt`` (kept apart from the model files, which are all ``out`` holds besides)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    device = next(task.module.parameters()).device
    loss_head = LossHead(config.loss, config.margin).to(device)
    groups = task.param_groups(config.lr, config.tower_lr)
    groups.append({"params": [p for p in loss_head.parameters() if p.requires_grad], "lr": config.lr,
                   "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    steps_per_epoch = len(epoch_batches(task.train_text_image, config, np.random.default_rng(0)))
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {config.batch_size} is larger than the {len(set(task.train_text_image))} "
                         "training photos")
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, config.warmup))
    state = {"epoch": 0, "history": [], "best_rsum": -1.0, "best_epoch": 0, "bad_epochs": 0, "seconds": 0.0}
    (out / "training").mkdir(exist_ok=True)
    checkpoint = out / "training" / "checkpoint.pt"
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        if saved["config"] != asdict(config):
            raise ValueError(f"{checkpoint} was written with other settings; use another --out or delete it")
        task.module.load_state_dict(saved["model"], strict=False)
        loss_head.load_state_dict(saved["loss"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
    while state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        torch.manual_seed(config.seed + epoch)
        rng = np.random.default_rng(config.seed + epoch)
        task.module.train()
        batches = epoch_batches(task.train_text_image, config, rng)
        bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="step", disable=not progress)
        total_loss = 0.0
        for step, (images, texts) in enumerate(bar, 1):
            text_emb, image_emb = task.embed_batch(images, texts, rng)
            positive = torch.from_numpy(task.train_text_image[texts][:, None] == images[None, :]).to(device)
            loss = loss_head(text_emb, image_emb, positive)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                loss_head.logit_scale.clamp_(0, math.log(100))
            total_loss += loss.item()
            bar.set_postfix(loss=f"{total_loss / step:.3f}", best_dev_rsum=f"{state['best_rsum']:.1f}")
        task.module.eval()
        metrics = task.dev_metrics()
        state["seconds"] += time.perf_counter() - started
        state["history"].append({"epoch": epoch, "loss": total_loss / len(batches), "seconds": state["seconds"],
                                 **{f"dev_{k}": v for k, v in metrics.items()}})
        shown = ("epoch", "loss", "seconds", "dev_i2t_R@1", "dev_t2i_R@1", "dev_rsum")
        bar.write(json.dumps({k: round(state["history"][-1][k], 3) for k in shown}))
        state["epoch"] = epoch
        if metrics["rsum"] > state["best_rsum"]:
            state.update(best_rsum=metrics["rsum"], best_epoch=epoch, bad_epochs=0)
            task.export(out, {"epoch": str(epoch), "dev_rsum": f"{metrics['rsum']:.2f}", "config": json.dumps(
                asdict(config))})
        else:
            state["bad_epochs"] += 1
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"config": asdict(config), "model": _trainable_state(task.module), "loss": loss_head.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state}, tmp)
        os.replace(tmp, checkpoint)
        atomic_write_json(out / "training" / "history.json", {"config": asdict(config), **state})
    return state["history"]
