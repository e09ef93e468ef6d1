"""What glibc's large-block unmapping costs PyTorch on the CPU, and what `reuse_large_blocks` wins back.

    python benchmarks/allocator.py [--views 128] [--repeats 3]

One process, default allocator first, then with `crossmodal.allocator.reuse_large_blocks()` (the settings
cannot be undone in-process, so the order is fixed). Two workloads of `crossmodal train --model lite`:
caching photo activations (stem + blocks 0-10 of EfficientNet-Lite0 on a batch of views, inference) and
one training step of the v3 recipe's trainable part (blocks 11-15 + head conv on 128 photos, forward and
backward). Reports the median wall time, the CPU time spent in the kernel, and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from crossmodal.allocator import reuse_large_blocks
from crossmodal.encoders.lite import LiteHeads, LiteTowers
from crossmodal.training.lite_model import LiteTrainable


def measure(work: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall seconds and median kernel (system) CPU seconds of ``work`` after one warm-up run."""
    work()
    walls, systems = [], []
    for _ in range(repeats):
        before, started = os.times(), time.perf_counter()
        work()
        walls.append(time.perf_counter() - started)
        systems.append(os.times().system - before.system)
    return statistics.median(walls), statistics.median(systems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=128, help="photo views per batch when caching")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    towers = LiteTowers()
    model = LiteTrainable(towers, LiteHeads(512), image_blocks=5, text_layers=0)
    pixels = torch.randn(args.views, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # a plain tensor: inference-mode tensors cannot enter autograd
        acts = towers.image.forward_blocks(towers.image.forward_stem(pixels[:128]), 0, model.image_from)

    def cache() -> None:
        with torch.inference_mode():
            towers.image.forward_blocks(towers.image.forward_stem(pixels), 0, model.image_from)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model.embed_images(acts).square().mean().backward()

    workloads = {"cache photo activations": cache, "training step (photo side)": step}
    results = {}
    for setting in ("glibc default", "reuse_large_blocks"):
        if setting == "reuse_large_blocks" and not reuse_large_blocks():
            raise SystemExit("mallopt is not available here (not glibc)")
        for name, work in workloads.items():
            results[name, setting] = measure(work, args.repeats)
    table = Table(title=f"PyTorch CPU allocator settings ({torch.get_num_threads()} threads)")
    for col in ("workload", "default s", "kernel CPU s", "reuse s", "kernel CPU s ", "speed-up"):
        table.add_column(col)
    for name in workloads:
        (wall0, sys0), (wall1, sys1) = results[name, "glibc default"], results[name, "reuse_large_blocks"]
        table.add_row(name, f"{wall0:.2f}", f"{sys0:.2f}", f"{wall1:.2f}", f"{sys1:.2f}", f"{wall0 / wall1:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
