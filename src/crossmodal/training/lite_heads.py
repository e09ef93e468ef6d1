"""Train the projection heads of ``lite`` on cached frozen-tower features (Flickr8k layout).

    python -m crossmodal.training.lite_heads --data ../shared/datasets/flickr8k \
        --out src/crossmodal/encoders/weights/lite.safetensors

Recipe (see the dataset README): features standardised with train statistics, input dropout 0.2,
linear projections to 512-d, symmetric InfoNCE with a learnable temperature, AdamW with weight decay
0.1 and a one-cycle schedule (max lr 1e-3), 10 epochs, the epoch with the best dev RSUM kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..encoders.lite import LiteHeads, LiteTowers
from ..evaluation.metrics import recall_metrics
from ..sources.datasets import load_flickr_layout
from .features import cached_features


def multi_positive_infonce(image: torch.Tensor, text: torch.Tensor, owner: torch.Tensor,
                           logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of (caption, its photo) pairs where captions of one photo may
    repeat: pairs sharing a photo are positives of each other, never negatives."""
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = logit_scale.exp() * text @ image.T
    positive = (owner[:, None] == owner[None, :]).float()
    target = positive / positive.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train_heads(train: tuple[np.ndarray, np.ndarray, np.ndarray], dev: tuple[np.ndarray, np.ndarray, np.ndarray],
                dim: int = 512, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3,
                weight_decay: float = 0.1, dropout: float = 0.2, seed: int = 0) -> tuple[LiteHeads, list[dict]]:
    """Train heads on (image features, text features, caption->photo index); returns (best heads, history)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, texts, owner = (torch.from_numpy(np.asarray(a)) for a in train)
    heads = LiteHeads(dim, dropout)
    for head, feats in ((heads.image, images), (heads.text, texts)):
        head.mean.copy_(feats.mean(0))
        head.std.copy_(feats.std(0).clamp(min=1e-6))
    logit_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    params = [*heads.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * (len(texts) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    best, best_state, history = -1.0, None, []
    for epoch in range(1, epochs + 1):
        heads.train()
        order = torch.from_numpy(rng.permutation(len(texts)))
        losses = []
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            loss = multi_positive_infonce(heads.image(images[owner[idx]]), heads.text(texts[idx]), owner[idx],
                                          logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                logit_scale.clamp_(0, np.log(100))
            losses.append(loss.item())
        metrics = evaluate_heads(heads, dev)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **metrics})
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in history[-1].items()}))
        if metrics["rsum"] > best:
            best = metrics["rsum"]
            best_state = {k: v.clone() for k, v in heads.state_dict().items()}
    heads.load_state_dict(best_state)
    return heads.eval(), history


@torch.inference_mode()
def evaluate_heads(heads: LiteHeads, data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
    heads.eval()
    images, texts, owner = data
    img = F.normalize(heads.image(torch.from_numpy(images)), dim=-1).numpy()
    txt = F.normalize(heads.text(torch.from_numpy(texts)), dim=-1).numpy()
    return recall_metrics(img, txt, owner)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder in the Flickr8k layout")
    parser.add_argument("--out", required=True, type=Path, help="where to write the heads (.safetensors)")
    parser.add_argument("--cache", type=Path, default=Path("runs/features"), help="feature cache folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.time()
    towers = LiteTowers()
    splits = {}
    for split in ("train", "dev", "test"):
        data = load_flickr_layout(args.data, split)
        images, texts = cached_features(towers, data, args.cache / f"{Path(args.data).name}-{split}.npz")
        splits[split] = (images, texts, data.text_image)
    heads, history = train_heads(splits["train"], splits["dev"], epochs=args.epochs, seed=args.seed)
    dev, test = evaluate_heads(heads, splits["dev"]), evaluate_heads(heads, splits["test"])
    metadata = {
        "recipe": "frozen towers, standardised features, dropout 0.2, linear 512, InfoNCE, one-cycle 1e-3, wd 0.1",
        "epochs": str(args.epochs), "seed": str(args.seed),
        "dev": json.dumps({k: round(v, 2) for k, v in dev.items()}),
        "test": json.dumps({k: round(v, 2) for k, v in test.items()}),
    }
    heads.save(args.out, metadata)
    print(json.dumps({"dev": dev, "test": test, "seconds": round(time.time() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()
