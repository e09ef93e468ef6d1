"""Train ``lite`` on a caption dataset: heads on frozen features first, then (optionally) the last tower
blocks too; the result is a folder that ``--model`` loads anywhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..encoders.lite import LiteHeads, LiteTowers
from ..sources.datasets import CaptionDataset
from ..sources.images import ImageError, load_image
from .activations import cached_activations
from .features import cached_features
from .lite_model import LiteTrainable
from .lite_tasks import WEIGHTS_FILE, FeatureTask, LiteTask
from .loop import TrainConfig, fit

# The linear-probe stage before fine-tuning (at most --batch-size photos per step): 35 s on 2 cores,
# Flickr8k dev RSUM 287 at 256 photos per step, 277 at 128.
HEADS_STAGE = TrainConfig(epochs=20, batch_size=256, lr=2e-3, weight_decay=0.1, warmup=0.1, patience=5)


def _cache_name(data: CaptionDataset) -> str:
    return data.name.replace("/", "-").replace(":", "-")


def train_lite(train: CaptionDataset, dev: CaptionDataset, out: Path, config: TrainConfig,
               image_blocks: int = 0, text_layers: int = 0, views: int = 4, dim: int = 512, dropout: float = 0.2,
               cache: Path = Path("runs/cache"), progress: bool = True, device: str = "cpu") -> list[dict[str, Any]]:
    """Fit heads on cached frozen features with ``config``; or, when asked to unfreeze, fit them with the
    HEADS_STAGE recipe and then fine-tune them with the last ``image_blocks`` photo blocks and
    ``text_layers`` caption layers using ``config``. Writes ``out/lite.safetensors``; returns the history."""
    torch.manual_seed(config.seed)  # the heads' initial weights; libraries may have seeded torch at random
    towers = LiteTowers().to(device)
    if not image_blocks and not text_layers:
        splits = [(*cached_features(towers, d, cache / f"{_cache_name(d)}.npz"), d.text_image) for d in (train, dev)]
        return fit(FeatureTask(LiteHeads(dim, dropout), *splits), config, out, progress)
    model = LiteTrainable(towers, LiteHeads(dim), image_blocks, text_layers).eval()  # frozen features: no dropout
    cuts = model.image_from, model.text_from
    tag = f"acts-b{cuts[0]}-l{cuts[1]}"
    # the seed picks the augmented views: one folder per seed, so runs with different seeds do not overwrite
    # each other's cache
    train_acts = cached_activations(towers, train, cache / f"{_cache_name(train)}-{tag}-v{views}-s{config.seed}",
                                    *cuts, n_views=views, seed=config.seed)
    dev_acts = cached_activations(towers, dev, cache / f"{_cache_name(dev)}-{tag}", *cuts)
    splits = [(*(f.cpu().numpy() for f in model.split_features(acts)), data.text_image)
              for acts, data in ((train_acts, train), (dev_acts, dev))]
    stage_one = out / "training" / "heads"
    heads_config = replace(HEADS_STAGE, loss=config.loss, margin=config.margin, seed=config.seed,
                           batch_size=min(HEADS_STAGE.batch_size, config.batch_size))
    fit(FeatureTask(LiteHeads(dim, dropout), *splits), heads_config, stage_one, progress)
    model.heads.load_state_dict(LiteHeads.load(stage_one / WEIGHTS_FILE).state_dict())
    return fit(LiteTask(model, train_acts, dev_acts, train.texts), config, out, progress)


def write_curve(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and dev RSUM per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, loss_ax = plt.subplots(figsize=(6, 3.5))
    loss_ax.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="train loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("train loss", color="tab:blue")
    rsum_ax = loss_ax.twinx()
    rsum_ax.plot(epochs, [h["dev_rsum"] for h in history], "s-", color="tab:red", label="dev RSUM")
    rsum_ax.set_ylabel("dev RSUM", color="tab:red")
    fig.suptitle(f"best dev RSUM {max(h['dev_rsum'] for h in history):.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def readable(data: CaptionDataset, warn: Callable[[str], None]) -> CaptionDataset:
    """``data`` without the photos that do not decode (one line each), so a bad file cannot stop a long run."""
    keep = np.ones(len(data.images), dtype=bool)
    for i, path in enumerate(data.images):
        try:
            load_image(path)
        except (ImageError, OSError) as e:
            warn(f"skipping {path}: {e}")
            keep[i] = False
    return data if keep.all() else data.subset_images(keep)
