"""Probe: distil the default ranking pipeline into lite's towers, from v4 (dev; test once with --splits test).

    python benchmarks/distill_towers.py [--epochs 3] [--lr 1e-4] [--weight 1.0] [--temperature 0.05]
        [--memory] [--group 4] [--out runs/lite-towers-distilled] [--evaluate] [--reranker FOLDER]
        [--splits dev test]

What `distill_heads.py` does for the heads, for the layers `crossmodal train` fine-tunes (photo blocks 11-15 and
the head conv, all six text layers, the heads), starting from v4's weights: symmetric InfoNCE on the true pairs
of the batch plus KL divergence to the teacher's softmax, both ways. The teacher is the default pipeline's score
of every Flickr8k `train` pair (hybrid, the top 16 fused with the reranker, the rest capped under them; the
matrix `distill_heads.py --teacher pipeline` keeps under --cache). The softmax is over the batch, built from
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
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from distill_heads import pipeline_teacher, ranking_cells
from safetensors.torch import load_file

from crossmodal.encoders import load_encoder
from crossmodal.encoders.base import Encoder
from crossmodal.encoders.lite import WEIGHTS, LiteHeads, LiteTowers, load_tower_tensors
from crossmodal.evaluation.runner import embed_dataset
from crossmodal.rerank.runtime import Reranker
from crossmodal.search.normalise import Bank, find_bank
from crossmodal.search.rerank import find_reranker
from crossmodal.sources.datasets import CaptionDataset, load_dataset
from crossmodal.training import losses
from crossmodal.training.activations import Activations, cached_activations
from crossmodal.training.lite_model import LiteTrainable
from crossmodal.training.lite_tasks import WEIGHTS_FILE, LiteTask
from crossmodal.training.loop import _lr_factor
from crossmodal.training.train_lite import _cache_name

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"
SCALE = 1 / 0.05  # the student's softmax temperature, as in distill_heads.py
VIEWS = 4
IMAGE_BLOCKS, TEXT_LAYERS = 5, 6  # what `crossmodal train --unfreeze image:5,text:6` (v4) fine-tunes


def activations(towers: LiteTowers, data: CaptionDataset, cache: Path, views: int = 1) -> Activations:
    """``data``'s activations at v4's cuts (the input of the first photo block and text layer trained), cached as
    `crossmodal train` names them."""
    cuts = len(towers.image._blocks) - IMAGE_BLOCKS, len(towers.text.encoder.layer) - TEXT_LAYERS
    tag = f"-v{views}-s0" if views > 1 else ""
    return cached_activations(towers, data, cache / f"{_cache_name(data)}-acts-b{cuts[0]}-l{cuts[1]}{tag}", *cuts,
                              n_views=views, seed=0)


def grouped_batches(neighbours: np.ndarray, group: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each photo once per epoch, in batches of ``batch``: a random photo, then up to ``group - 1`` of its nearest
    photos (``neighbours``: each photo's, nearest first) not yet taken, then the next random photo not taken."""
    taken = np.zeros(len(neighbours), dtype=bool)
    order = []
    for seed in rng.permutation(len(neighbours)):
        if taken[seed]:
            continue
        members = [seed, *[q for q in neighbours[seed] if not taken[q]][:group - 1]]
        taken[members] = True
        order += members
    return [np.array(order[s:s + batch]) for s in range(0, len(order) - batch + 1, batch)]


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
    train = load_dataset(args.dataset, "train")
    shipped = load_encoder("lite")
    bank, reranker = find_bank(shipped.fingerprint), find_reranker(shipped.fingerprint)
    towers, state = LiteTowers(), load_file(str(WEIGHTS))
    load_tower_tensors(towers, state)
    train_acts = activations(towers, train, cache, VIEWS)
    by_image = [np.flatnonzero(train.text_image == i) for i in range(len(train.images))]
    if not args.evaluate:
        trainable = LiteTrainable(towers, LiteHeads.from_state(state), IMAGE_BLOCKS, TEXT_LAYERS)
        dev = activations(towers, load_dataset(args.dataset, "dev"), cache)
        task = LiteTask(trainable, train_acts, dev, train.texts)
        distil(task, args, pipeline_teacher(shipped, train, bank, reranker, cache / "reranker"), by_image)
    student = load_encoder(str(out / WEIGHTS_FILE), multilingual=False)
    train_images, train_texts = model_vectors(out / WEIGHTS_FILE, train_acts)
    two_each = np.concatenate([by_image[i][:2] for i in range(len(train.images))])
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


def distil(task: LiteTask, args: argparse.Namespace, teacher: tuple[torch.Tensor, torch.Tensor],
           by_image: list[np.ndarray]) -> None:
    """Train ``task`` (v4's weights) against the teacher; the best epoch's weights (by the dual encoder's dev RSUM)
    go to ``args.out``."""
    model, train_acts, text_image, out = task.module, task.train, task.train_text_image, Path(args.out)
    teach_t2i, teach_i2t = teacher
    v4_vectors = model.embed_split(train_acts)  # the first epoch's memory too: nothing has trained yet
    neighbours = np.argsort(-(v4_vectors[0] @ v4_vectors[0].T), axis=1)[:, 1:9]
    opt = torch.optim.AdamW([{**g, "lr": args.lr} for g in task.param_groups(args.lr, args.lr)], weight_decay=0.1)
    steps = len(grouped_batches(neighbours, args.group, args.batch_size, np.random.default_rng(0))) * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, 0.1))
    log_scale = torch.tensor(math.log(SCALE))
    model.eval()
    best = (task.dev_metrics()["rsum"], 0)
    print(f"v4: dual encoder dev RSUM {best[0]:.2f}", flush=True)
    task.export(out, {"epoch": "0"})
    started = time.time()
    for epoch in range(1, args.epochs + 1):
        rng = np.random.default_rng(epoch)
        torch.manual_seed(epoch)  # dropout: as `crossmodal train`, whatever drew random numbers before
        memory = None
        if args.memory:
            memory = [torch.from_numpy(v) for v in (v4_vectors if epoch == 1 else model.embed_split(train_acts))]
        model.train()
        totals = np.zeros(2)
        batches = grouped_batches(neighbours, args.group, args.batch_size, rng)
        for images in batches:
            texts = np.concatenate([rng.choice(by_image[i], size=2, replace=False) for i in images])
            text_emb, image_emb = task.embed_batch(images, texts, rng)
            positive = torch.from_numpy(text_image[texts][:, None] == images[None, :])
            nce = losses.infonce(text_emb, image_emb, positive, log_scale)
            text_n, image_n = F.normalize(text_emb, dim=-1), F.normalize(image_emb, dim=-1)
            rows, cols = torch.from_numpy(texts), torch.from_numpy(images)
            if memory is None:  # the batch's softmax
                s = text_n @ image_n.T * SCALE
                pairs = ((s, teach_t2i[rows][:, cols]), (s.T, teach_i2t[cols][:, rows]))
            else:  # every train photo and caption: the batch's fresh, the rest from the epoch's start
                pairs = ((text_n @ memory[0].index_copy(0, cols, image_n).T * SCALE, teach_t2i[rows]),
                         (image_n @ memory[1].index_copy(0, rows, text_n).T * SCALE, teach_i2t[cols]))
            kd = sum(F.kl_div(F.log_softmax(student, 1), F.softmax(teacher / args.temperature, 1),
                              reduction="batchmean") for student, teacher in pairs)
            loss = nce + args.weight * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            totals += (nce.item(), kd.item())
        model.eval()
        rsum = task.dev_metrics()["rsum"]
        nce_mean, kd_mean = totals / len(batches)
        print(f"epoch {epoch} ({time.time() - started:.0f} s): InfoNCE {nce_mean:.3f}, KL {kd_mean:.3f}, "
              f"dual encoder dev RSUM {rsum:.2f}", flush=True)
        if rsum > best[0]:
            best = (rsum, epoch)
            task.export(out, {"epoch": str(epoch), "dev_rsum": f"{rsum:.2f}"})
    print(f"best epoch {best[1]} (0: v4's weights)", flush=True)


def model_vectors(weights: Path, acts: Activations) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (plain photos, every caption) of a split's cached activations through the weights file."""
    towers, state = LiteTowers(), load_file(str(weights))
    load_tower_tensors(towers, state)
    return LiteTrainable(towers, LiteHeads.from_state(state), IMAGE_BLOCKS, TEXT_LAYERS).embed_split(acts)


def rankings(encoder: Encoder, data: CaptionDataset, banks: dict[str, Bank], reranker: Reranker) -> str:
    """RSUM (and its text -> photo part) of ``encoder`` on ``data``: alone, normalised and through the default
    pipeline with each of ``banks``."""
    return ranking_cells(encoder, embed_dataset(encoder, data, progress=False, reranker=reranker), banks, reranker)


if __name__ == "__main__":
    main()
