"""Probe: distil the default ranking pipeline into lite's towers, from v4 (dev; test once with --splits test).

    python benchmarks/distill_towers.py [--epochs 3] [--lr 1e-4] [--weight 1.0] [--temperature 0.05]
        [--memory] [--group 4] [--out runs/lite-towers-distilled] [--evaluate] [--reranker FOLDER]
        [--splits dev test]

What `distill_heads.py` does for the heads, for the layers `crossmodal train` fine-tunes (photo blocks 11-15 and
the head conv, all six text layers, the heads), starting from v4's weights: symmetric InfoNCE on the true pairs
of the batch plus KL divergence to the teacher's softmax, both ways. The teacher is the default pipeline's score
of every Flickr8k `train` pair (hybrid, the top 16 fused with the reranker, the rest capped under them; the
matrix `training/distill_lite.py` keeps under --cache). The softmax is over the batch, built from
groups of ``--group`` photos near each other in v4's space so that hard negatives come together; or, with
``--memory``, over every train photo and caption: the batch's vectors fresh, the others computed at the start of
each epoch (without gradient). Each epoch prints the dual encoder's dev RSUM and the best epoch is kept in --out;
it is then ranked through the pipeline (v4's reranker reading the student's towers, or ``--reranker``; normalised
with v4's bank and with one of the student's own, built as lite's is), beside v4 read the same way (without the
multilingual tower, which was trained against v4's photo vectors) and v4 as shipped. ``--evaluate`` ranks what a
finished run left.

"v4" is whatever lite the tree ships. lite v5 is this script's `--epochs 3 --memory --group 1` run from v4; to make
it again, put v4's files back first (`git checkout d450e87 -- src/crossmodal/encoders/weights`), as the teacher, the
starting weights, the bank and the reranker are all the shipped model's (docs/model-card-lite.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from distill_heads import ranking_cells

from crossmodal.encoders import load_encoder
from crossmodal.encoders.base import Encoder
from crossmodal.encoders.lite import WEIGHTS
from crossmodal.evaluation.runner import embed_dataset
from crossmodal.rerank.runtime import Reranker
from crossmodal.search.normalise import Bank, find_bank
from crossmodal.search.rerank import find_reranker
from crossmodal.sources.datasets import CaptionDataset, load_dataset
from crossmodal.training.distill_lite import DistilConfig, distil, pipeline_teacher, student_task
from crossmodal.training.lite_tasks import WEIGHTS_FILE

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--cache", default="runs/cache")
    parser.add_argument("--out", default="runs/lite-towers-distilled")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate, heads and tower layers")
    parser.add_argument("--weight", type=float, default=1.0, help="weight of the distillation terms")
    parser.add_argument("--temperature", type=float, default=0.05, help="teacher softmax temperature")
    parser.add_argument("--group", type=int, default=4, help="photos near each other per group in a batch; 1: random")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--memory", action="store_true",
                        help="distil over every train photo and caption (vectors refreshed each epoch), not the batch")
    parser.add_argument("--evaluate", action="store_true", help="rank the weights a finished run left in --out")
    parser.add_argument("--reranker", help="the student's own reranker (`crossmodal train --reranker`); default: v4's")
    parser.add_argument("--splits", nargs="+", default=["dev"], help="where to rank the best epoch, beside v4 "
                        "(test: once, for the configuration chosen on dev)")
    args = parser.parse_args()
    cache, out = Path(args.cache), Path(args.out)
    torch.manual_seed(0)
    train, dev = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "dev")
    shipped = load_encoder("lite")
    bank, reranker = find_bank(shipped.fingerprint), find_reranker(shipped.fingerprint)
    task = student_task(WEIGHTS, train, dev, cache)
    if not args.evaluate:
        config = DistilConfig(epochs=args.epochs, lr=args.lr, weight=args.weight, temperature=args.temperature,
                              batch_size=args.batch_size, memory=args.memory, group=args.group)
        distil(task, pipeline_teacher(shipped, train, bank, reranker, cache / "reranker"), out, config)
    student = load_encoder(str(out / WEIGHTS_FILE), multilingual=False)
    train_images, train_texts = student_task(out / WEIGHTS_FILE, train, dev, cache).module.embed_split(task.train)
    two_each = np.concatenate([np.flatnonzero(train.text_image == i)[:2] for i in range(len(train.images))])
    own = Bank(train_texts[two_each], train_images, "student")
    v4_plain = load_encoder("lite", multilingual=False)
    own_reranker = find_reranker(student.fingerprint, Path(args.reranker)) if args.reranker else reranker
    if own_reranker is None:
        raise SystemExit(f"{args.reranker} is not a reranker for {out / WEIGHTS_FILE}")
    for split in args.splits:
        data = load_dataset(args.dataset, split)
        for name, encoder, banks, scorer in (
                ("v4 as shipped", shipped, {"v4 bank": bank}, reranker),
                ("v4, no multilingual tower", v4_plain, {"v4 bank": bank}, reranker),
                (f"distilled ({'own' if args.reranker else 'v4'} reranker)", student,
                 {"v4 bank": bank, "own bank": own}, own_reranker)):
            print(f"{split}: {name}: {rankings(encoder, data, banks, scorer)}", flush=True)


def rankings(encoder: Encoder, data: CaptionDataset, banks: dict[str, Bank], reranker: Reranker) -> str:
    """RSUM (and its text -> photo part) of ``encoder`` on ``data``: alone, normalised and through the default
    pipeline with each of ``banks``."""
    return ranking_cells(encoder, embed_dataset(encoder, data, progress=False, reranker=reranker), banks, reranker)


if __name__ == "__main__":
    main()
