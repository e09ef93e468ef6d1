"""Dev RSUM of `lite` fine-tuning recipes, one row per recipe, in one process.

    python benchmarks/train_sweep.py [--data ../shared/datasets/flickr8k] [--device cuda] [--only NAME ...]

Each recipe runs `train_lite` (the code behind `crossmodal train --model lite`) from the same seed and
reports the best dev RSUM, the dev RSUM after each epoch and the wall time. Activation caches are
shared between recipes that cut the towers at the same place. On a 2-core CPU one recipe takes 30-50
minutes, so the sweep is meant for a GPU (`--device cuda`: about a minute per recipe on one H100);
`--only` picks recipes, e.g. to check the shipped one on the CPU. Choose on dev only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crossmodal.allocator import reuse_large_blocks
from crossmodal.sources.datasets import load_dataset
from crossmodal.training.loop import TrainConfig
from crossmodal.training.train_lite import train_lite

# name -> (photo blocks, caption layers, overrides of TrainConfig); every recipe caches 4 views per photo
V2 = dict(epochs=6, batch_size=128, lr=5e-4, tower_lr=1e-4, patience=3)
RECIPES: dict[str, tuple[int, int, dict[str, Any]]] = {
    "v2 (shipped before)": (5, 2, V2),
    "blocks 8, layers 4": (8, 4, V2),
    "blocks 11, layers 6": (11, 6, V2),
    "blocks 8, layers 4, 2 captions": (8, 4, V2 | dict(captions_per_image=2)),
    "blocks 8, layers 4, 10 epochs": (8, 4, V2 | dict(epochs=10)),
    "b8 l4, 2 captions, 8 epochs": (8, 4, V2 | dict(captions_per_image=2, epochs=8)),
    "b8 l4, 5 captions, 8 epochs": (8, 4, V2 | dict(captions_per_image=5, epochs=8)),
    "b8 l4, 2 captions, 8 epochs, 256 photos": (8, 4, V2 | dict(captions_per_image=2, epochs=8, batch_size=256)),
    "b8 l4, 2 captions, 8 epochs, VSE++": (8, 4, V2 | dict(captions_per_image=2, epochs=8, loss="vsepp")),
    "b8 l4, 2 captions, 8 epochs, lr 1e-3/2e-4": (8, 4, V2 | dict(captions_per_image=2, epochs=8, lr=1e-3,
                                                                  tower_lr=2e-4)),
    "b8 l4, 2 captions, 8 epochs, tower lr 3e-4": (8, 4, V2 | dict(captions_per_image=2, epochs=8, tower_lr=3e-4)),
    "b8 l4, 2 captions, 8 epochs, tower lr 6e-4": (8, 4, V2 | dict(captions_per_image=2, epochs=8, tower_lr=6e-4)),
    "b8 l4, 2 captions, 8 epochs, tower lr 1e-3": (8, 4, V2 | dict(captions_per_image=2, epochs=8, tower_lr=1e-3)),
    "b8 l4, 1 caption, 8 epochs, tower lr 6e-4": (8, 4, V2 | dict(epochs=8, tower_lr=6e-4)),
    "b8 l4, 2 captions, 8 epochs, tower lr 6e-4, 256 photos": (8, 4, V2 | dict(captions_per_image=2, epochs=8,
                                                                               tower_lr=6e-4, batch_size=256)),
    "b8 l4, 2 captions, 6 epochs, tower lr 6e-4": (8, 4, V2 | dict(captions_per_image=2, tower_lr=6e-4)),
    "b8 l4, 2 captions, 6 epochs, tower lr 6e-4, 256 photos": (8, 4, V2 | dict(captions_per_image=2, tower_lr=6e-4,
                                                                               batch_size=256)),
    "b5 l4, 2 captions, 10 epochs": (5, 4, V2 | dict(captions_per_image=2, epochs=10)),
    "b5 l4, 2 captions, 8 epochs, tower lr 6e-4": (5, 4, V2 | dict(captions_per_image=2, epochs=8, tower_lr=6e-4)),
    "v3: b5 l4, 2 captions, 10 epochs, tower lr 6e-4": (5, 4, V2 | dict(captions_per_image=2, epochs=10,
                                                                        tower_lr=6e-4)),
    "v3 with heads lr 1e-3": (5, 4, V2 | dict(captions_per_image=2, epochs=10, tower_lr=6e-4, lr=1e-3)),
    "v3 with 256 photos, 12 epochs": (5, 4, V2 | dict(captions_per_image=2, epochs=12, tower_lr=6e-4,
                                                      batch_size=256)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/datasets/flickr8k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.device == "cpu":
        reuse_large_blocks()  # as crossmodal train does
    train, dev = load_dataset(args.data, "train"), load_dataset(args.data, "dev")
    console = Console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or RECIPES:
            blocks, layers, overrides = RECIPES[name]
            started = time.perf_counter()
            history = train_lite(train, dev, Path(tmp) / str(len(rows)), TrainConfig(**overrides), blocks, layers,
                                 views=4, cache=args.cache, progress=False, device=args.device)
            curve = [round(h["dev_rsum"], 1) for h in history]
            rows.append({"recipe": name, "blocks": blocks, "layers": layers, **overrides, "best": max(curve),
                         "curve": curve, "seconds": round(time.perf_counter() - started)})
            console.print(json.dumps(rows[-1]))
    table = Table(title=f"lite fine-tuning recipes, dev RSUM ({args.device})")
    for col in ("recipe", "best dev RSUM", "dev RSUM by epoch", "seconds"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["recipe"], f"{r['best']:.1f}", " ".join(f"{x:.0f}" for x in r["curve"]), str(r["seconds"]))
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
