"""Distil a lite model's default ranking pipeline into its own towers: how lite v5 was made from v4.

The teacher is the pipeline's score of every (caption, photo) pair of the train split, both ways, as search gives
them (normalised, hybrid, the default top N fused with the reranker, the rest capped under them; v5 learnt from
the top 16, the default then). The student is the same model's towers (photo blocks 11-15 and the head conv, all
six text layers, the heads), trained with symmetric InfoNCE on the batch's true pairs plus KL divergence to the
teacher's softmax over every train photo and caption: the batch's vectors fresh, the others from the start of the
epoch, without gradient (a memory bank). Over the batch
alone the softmax hides most of what the teacher knows (Flickr8k dev: 343.66 against 353.18; docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..encoders.base import Encoder
from ..rerank.runtime import Reranker
from ..search.normalise import Bank
from ..sources.datasets import CaptionDataset
from . import losses
from .activations import Activations, cached_activations
from .lite_tasks import LiteTask
from .loop import _lr_factor

IMAGE_BLOCKS, TEXT_LAYERS = 5, 6  # the layers lite's recipe fine-tunes (`--unfreeze image:5,text:6`)


@dataclass(frozen=True)
class DistilConfig:
    """The recipe of lite v5 (chosen on Flickr8k dev): 3 epochs, peak lr 1e-4 for every layer trained (10%
    warm-up, then cosine), 128 photos with 2 captions each per step, teacher temperature 0.05, KL weight 1.
    ``memory`` False takes the softmax over the batch, built from groups of ``group`` photos near each other."""

    epochs: int = 3
    lr: float = 1e-4
    weight: float = 1.0
    temperature: float = 0.05
    scale: float = 1 / 0.05  # the student's softmax temperature
    batch_size: int = 128
    memory: bool = True
    group: int = 1
    views: int = 4
    seed: int = 0


def pipeline_teacher(encoder: Encoder, data: CaptionDataset, bank: Bank, reranker: Reranker, cache: Path | None,
                     block: int = 256, log: Callable[[str], None] = print) -> tuple[torch.Tensor, torch.Tensor]:
    """The default pipeline's scores of every (caption, photo) pair of ``data``, both ways ((texts, photos) and
    (photos, texts)), as search gives them; kept in ``cache`` (about 1.4 GB for Flickr8k train)."""
    from ..evaluation.runner import embed_dataset, pipeline_scores
    from ..search.pipeline import Ranking

    name = f"teacher-{encoder.fingerprint}-{bank.id}-{reranker.fingerprint}-{len(data.images)}-{len(data.texts)}.npz"
    saved = None if cache is None else cache / name
    if saved is not None and saved.is_file():
        with np.load(saved) as arrays:
            return torch.from_numpy(arrays["t2i"]), torch.from_numpy(arrays["i2t"])
    emb = embed_dataset(encoder, data, progress=False, reranker=reranker)
    sets = pipeline_scores(encoder, emb, Ranking(), bank, reranker)
    out = []
    for direction, n_queries, n_items in (("t2i", len(emb.texts), len(emb.images)),
                                          ("i2t", len(emb.images), len(emb.texts))):
        matrix, items, started = np.empty((n_queries, n_items), dtype=np.float32), np.arange(n_items), time.time()
        for lo in range(0, n_queries, block):
            queries = np.arange(lo, min(lo + block, n_queries))
            for q, (scores, positions) in zip(queries, sets.ranked(direction, queries, items, n_items), strict=True):
                matrix[q, positions] = scores
        log(f"teacher {direction}: {n_queries} queries in {time.time() - started:.0f} s")
        out.append(matrix)
    if saved is not None:
        from ..collection.atomic import atomic_write

        saved.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(saved, lambda f: np.savez(f, t2i=out[0], i2t=out[1]))
    return torch.from_numpy(out[0]), torch.from_numpy(out[1])


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


def student_task(weights: Path, train: CaptionDataset, dev: CaptionDataset, cache: Path, views: int = 4,
                 seed: int = 0) -> LiteTask:
    """The lite model in ``weights`` as a student: its towers from the cut of lite's recipe on, over cached
    activations of ``train`` (``views`` augmented views a photo) and ``dev``, named as `crossmodal train` names
    them so both share the cache."""
    from safetensors.torch import load_file

    from ..encoders.lite import LiteHeads, LiteTowers, load_tower_tensors
    from .lite_model import LiteTrainable
    from .train_lite import _cache_name

    towers, state = LiteTowers(), load_file(str(weights))
    load_tower_tensors(towers, state)
    model = LiteTrainable(towers, LiteHeads.from_state(state), IMAGE_BLOCKS, TEXT_LAYERS)
    deeper = [k for k in state if k.startswith("towers.image._blocks.")
              and int(k.split(".")[3]) < model.image_from]
    if deeper:
        raise ValueError(f"{weights} tuned photo blocks below {model.image_from} ({deeper[0]}); distillation trains "
                         f"the last {IMAGE_BLOCKS} and caches the activations before them")
    cuts = model.image_from, model.text_from

    def acts(data: CaptionDataset, n_views: int) -> Activations:
        tag = f"-v{n_views}-s{seed}" if n_views > 1 else ""
        return cached_activations(towers, data, cache / f"{_cache_name(data)}-acts-b{cuts[0]}-l{cuts[1]}{tag}", *cuts,
                                  n_views=n_views, seed=seed)

    return LiteTask(model, acts(train, views), acts(dev, 1), train.texts)


def distil(task: LiteTask, teacher: tuple[torch.Tensor, torch.Tensor], out: Path, config: DistilConfig,
           max_steps: int | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train ``task`` against the teacher's (t2i, i2t) score matrices over its train split; the best epoch by the
    dual encoder's dev RSUM (epoch 0: the weights it started from) goes to ``out/lite.safetensors``. Returns the
    history, also written to ``out/training/history.json``."""
    model, train_acts, text_image = task.module, task.train, task.train_text_image
    by_image = [np.flatnonzero(text_image == i) for i in range(len(train_acts.images))]
    if min(len(b) for b in by_image) < 2:
        raise ValueError("distillation draws 2 captions of each train photo per step; some photos have fewer")
    teach_t2i, teach_i2t = teacher
    start_vectors = model.embed_split(train_acts)  # the first epoch's memory too: nothing has trained yet
    neighbours = np.argsort(-(start_vectors[0] @ start_vectors[0].T), axis=1)[:, 1:9]
    batch = min(config.batch_size, len(by_image))
    opt = torch.optim.AdamW([{**g, "lr": config.lr} for g in task.param_groups(config.lr, config.lr)],
                            weight_decay=0.1)
    per_epoch = len(grouped_batches(neighbours, config.group, batch, np.random.default_rng(0)))
    per_epoch = min(per_epoch, max_steps or per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, per_epoch * config.epochs, 0.1))
    log_scale = torch.tensor(math.log(config.scale))
    model.eval()
    history = [{"epoch": 0, "dev_rsum": task.dev_metrics()["rsum"]}]
    log(f"before: dual encoder dev RSUM {history[0]['dev_rsum']:.2f}")
    task.export(out, {"epoch": "0", "distilled": json.dumps(asdict(config))})
    best, started = history[0]["dev_rsum"], time.time()
    for epoch in range(1, config.epochs + 1):
        rng = np.random.default_rng(config.seed + epoch)
        torch.manual_seed(config.seed + epoch)  # dropout, as `crossmodal train` seeds it
        memory = None
        if config.memory:
            memory = [torch.from_numpy(v) for v in (start_vectors if epoch == 1 else model.embed_split(train_acts))]
        model.train()
        totals = np.zeros(2)
        batches = grouped_batches(neighbours, config.group, batch, rng)[:per_epoch]
        for images in batches:
            texts = np.concatenate([rng.choice(by_image[i], size=2, replace=False) for i in images])
            text_emb, image_emb = task.embed_batch(images, texts, rng)
            positive = torch.from_numpy(text_image[texts][:, None] == images[None, :])
            nce = losses.infonce(text_emb, image_emb, positive, log_scale)
            text_n, image_n = F.normalize(text_emb, dim=-1), F.normalize(image_emb, dim=-1)
            rows, cols = torch.from_numpy(texts), torch.from_numpy(images)
            if memory is None:  # the batch's softmax
                s = text_n @ image_n.T * config.scale
                pairs = ((s, teach_t2i[rows][:, cols]), (s.T, teach_i2t[cols][:, rows]))
            else:  # every train photo and caption: the batch's fresh, the rest from the epoch's start
                pairs = ((text_n @ memory[0].index_copy(0, cols, image_n).T * config.scale, teach_t2i[rows]),
                         (image_n @ memory[1].index_copy(0, rows, text_n).T * config.scale, teach_i2t[cols]))
            kd = sum(F.kl_div(F.log_softmax(student, 1), F.softmax(scores / config.temperature, 1),
                              reduction="batchmean") for student, scores in pairs)
            loss = nce + config.weight * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            totals += (nce.item(), kd.item())
        model.eval()
        rsum = task.dev_metrics()["rsum"]
        nce_mean, kd_mean = totals / max(len(batches), 1)
        history.append({"epoch": epoch, "infonce": float(nce_mean), "kl": float(kd_mean), "dev_rsum": rsum})
        log(f"epoch {epoch} ({time.time() - started:.0f} s): InfoNCE {nce_mean:.3f}, KL {kd_mean:.3f}, "
            f"dual encoder dev RSUM {rsum:.2f}")
        if rsum > best:
            best = rsum
            task.export(out, {"epoch": str(epoch), "dev_rsum": f"{rsum:.2f}", "distilled": json.dumps(asdict(config))})
    (out / "training").mkdir(parents=True, exist_ok=True)
    (out / "training" / "history.json").write_text(json.dumps({"config": asdict(config), "history": history},
                                                              indent=1))
    return history


def pipeline_of(model: str) -> tuple[Path, Bank, Reranker]:
    """The weights file, bank and reranker of a lite ``model`` (lite, or a folder `crossmodal train` wrote, which
    holds its own ``bank.npz`` and ``reranker/``), found from its files alone; a clear error when one is missing."""
    from ..encoders import lite_weights, model_fingerprint, model_folder
    from ..search.normalise import BANK_FILE, find_bank
    from ..search.rerank import RERANKER_DIR, find_reranker

    weights = lite_weights(model)
    if weights is None:
        raise ValueError("--distill trains lite models: --model lite or a folder `crossmodal train` wrote")
    fingerprint = model_fingerprint(str(weights))
    own = model_folder(model)
    bank = find_bank(fingerprint, *([own / BANK_FILE] if own else []))
    reranker = find_reranker(fingerprint, *([own / RERANKER_DIR] if own else []))
    if bank is None or reranker is None:
        missing = "bank" if bank is None else "reranker"
        raise ValueError(f"the teacher is {model}'s whole pipeline, and it has no {missing}: build one into {model} "
                         "first (`crossmodal bank --out MODEL/bank.npz`, `crossmodal train --reranker --out "
                         "MODEL/reranker`)")
    return weights, bank, reranker


def distil_lite(model: str, train: CaptionDataset, dev: CaptionDataset, out: Path, config: DistilConfig,
                cache: Path, max_steps: int | None = None, log: Callable[[str], None] = print
                ) -> list[dict[str, Any]]:
    """`crossmodal train --distill`: ``model`` (see ``pipeline_of``) distilled from its own default pipeline on
    ``train``; the best dev epoch in ``out``."""
    from ..encoders import load_encoder

    weights, bank, reranker = pipeline_of(model)
    torch.manual_seed(config.seed)
    teacher = pipeline_teacher(load_encoder(model), train, bank, reranker, cache, log=log)
    task = student_task(weights, train, dev, cache, config.views, config.seed)
    return distil(task, teacher, out, config, max_steps, log)
