"""What one CPU training step of `crossmodal train --model lite` costs, side by side with its variants.

    python benchmarks/train_step.py [--data ../shared/datasets/flickr8k] [--repeats 3]

One process, real Flickr8k `train` captions (falls back to generated captions of the same length
spread when the dataset is absent). Caption side: text layers 2-5 on 256 captions (128 photos x 2),
forward and backward, padded to the batch's longest caption (as before) versus run in length groups
of `TEXT_BUCKET` captions (`LiteTrainable.text_features` now), and all six layers (v4) grouped. Photo
side: blocks 11-15 versus blocks 8-15, plus head conv, on 128 photos, forward and backward. Steps
add the two sides (the loss and optimiser step take under 0.05 s). Median seconds and ratios.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from allocator import measure  # benchmarks/ is on sys.path when a script here runs
from rich.console import Console
from rich.table import Table

from crossmodal.allocator import reuse_large_blocks
from crossmodal.encoders.lite import LiteHeads, LiteTowers
from crossmodal.sources.datasets import load_dataset
from crossmodal.training.lite_model import TEXT_BUCKET, LiteTrainable


def captions(data: Path, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` random Flickr8k train captions, or generated ones when the dataset is not there."""
    if data.is_dir():
        texts = load_dataset(data, "train").texts
        return [texts[i] for i in rng.choice(len(texts), n, replace=False)]
    words = ["a", "dog", "runs", "across", "the", "green", "grass", "while", "two", "children", "play", "near"]
    return [" ".join(rng.choice(words, size=int(rng.integers(4, 30)))) for _ in range(n)]


def time_step(model: LiteTrainable, forward: Callable[[], torch.Tensor], repeats: int) -> float:
    """Median seconds of ``forward`` plus its backward pass."""
    def run() -> None:
        model.zero_grad(set_to_none=True)
        forward().square().mean().backward()
    return measure(run, repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/flickr8k"))
    parser.add_argument("--photos", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    reuse_large_blocks()
    torch.manual_seed(0)
    towers = LiteTowers()
    texts = captions(args.data, 2 * args.photos, np.random.default_rng(0))
    photo, text = {}, {}
    for image_blocks, text_layers in ((5, 4), (8, 4), (5, 6)):
        towers.requires_grad_(False)
        model = LiteTrainable(towers, LiteHeads(512), image_blocks, text_layers).train()
        with torch.no_grad():
            tokens = towers.tokenize(texts)
            mask = tokens["attention_mask"]
            hidden = towers.text_layers(towers.text_embeddings(tokens), mask, 0, model.text_from)
            pixels = torch.randn(args.photos, 3, 224, 224).contiguous(memory_format=torch.channels_last)
            acts = towers.image.forward_blocks(towers.image.forward_stem(pixels), 0, model.image_from)
        photo.setdefault(image_blocks, time_step(model, partial(model.embed_images, acts), args.repeats))
        text.setdefault((text_layers, "grouped"), time_step(model, partial(model.text_features, hidden, mask),
                                                            args.repeats))
        if text_layers == 4:
            text.setdefault((4, "padded"), time_step(
                model, partial(model.text_features, hidden, mask, bucket=len(texts)), args.repeats))
    table = Table(title=f"lite training step on the CPU ({torch.get_num_threads()} threads, {args.photos} photos, "
                        f"{len(texts)} captions, mean {mask.sum(1).float().mean():.1f} tokens)")
    for col in ("part", "variant", "median s", "ratio"):
        table.add_column(col)
    table.add_row("captions", "layers 2-5, padded to the batch's longest", f"{text[4, 'padded']:.2f}", "1.00x")
    table.add_row("captions", f"layers 2-5, length groups of {TEXT_BUCKET}", f"{text[4, 'grouped']:.2f}",
                  f"{text[4, 'padded'] / text[4, 'grouped']:.2f}x faster")
    table.add_row("captions", f"layers 0-5, length groups of {TEXT_BUCKET}", f"{text[6, 'grouped']:.2f}",
                  f"{text[4, 'padded'] / text[6, 'grouped']:.2f}x faster")
    table.add_row("photos", "blocks 11-15 + head conv", f"{photo[5]:.2f}", "1.00x")
    table.add_row("photos", "blocks 8-15 + head conv", f"{photo[8]:.2f}", f"{photo[8] / photo[5]:.2f}x the cost")
    v3 = photo[5] + text[4, "padded"]
    for name, seconds in (("v3: blocks 11-15, layers 2-5, padded", v3),
                          ("blocks 8-15, layers 2-5, grouped", photo[8] + text[4, "grouped"]),
                          ("v4: blocks 11-15, layers 0-5, grouped", photo[5] + text[6, "grouped"])):
        table.add_row("step", name, f"{seconds:.2f}", f"{seconds / v3:.2f}x the cost")
    Console().print(table)


if __name__ == "__main__":
    main()
