"""Train the reranker (``crossmodal.rerank``) for a lite model on a Flickr-layout caption dataset.

Steps: cache the frozen towers' grids and caption token states (and the dual vectors) once per split;
mine hard negatives with the dual encoder (its top candidates that are not positives); train the
cross-encoder with a listwise softmax loss in both directions (a caption against its positive photo
and hard negative photos, a photo against one of its captions and hard negative captions); keep the
epoch with the best fused dev RSUM; export ONNX graphs and ``reranker.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..encoders.base import normalize
from ..encoders.lite import LiteEncoder
from ..search.rerank import pad_states
from ..sources.datasets import CaptionDataset, load_dataset
from ..sources.images import load_image

FEATURE_FILES = ("grids", "tokens", "offsets", "image_vec", "text_vec", "text_image")


@dataclass
class SplitFeatures:
    """Frozen lite features of one split: photo grids (N, 49, 1280) f16, caption token states stored flat
    (sum of lengths, 384) f16 with ``offsets`` (M + 1), dual vectors (L2-normalised) and caption owners."""

    grids: np.ndarray
    tokens: np.ndarray
    offsets: np.ndarray
    image_vec: np.ndarray
    text_vec: np.ndarray
    text_image: np.ndarray

    def text_batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (B, L, 384) float32, padded to the longest caption, and the (B, L) int64 mask."""
        states, mask = pad_states([self.tokens[self.offsets[j]:self.offsets[j + 1]] for j in rows])
        return torch.from_numpy(states), torch.from_numpy(mask)

    def grid_batch(self, rows: np.ndarray) -> torch.Tensor:
        """Grids (B, 49, 1280) float32 of photos ``rows``."""
        return torch.from_numpy(self.grids[rows].astype(np.float32))

    def pooled_photos(self, block: int = 500) -> np.ndarray:
        """The photo tower's pooled features (N, 1280) float32: each grid's mean over its cells (what lite's
        image head reads), a block at a time (the grids may be memory-mapped)."""
        return np.concatenate([np.asarray(self.grids[s:s + block], dtype=np.float32).mean(1)
                               for s in range(0, len(self.grids), block)])


def photo_grid(encoder: LiteEncoder, pixels: torch.Tensor) -> torch.Tensor:
    """Lite's image grid before pooling, (N, 1280, 7, 7) at 224 px: what the reranker reads."""
    img = encoder.towers.image
    return F.relu6(img._bn1(img._conv_head(img.forward_blocks(img.forward_stem(pixels)))))


@torch.inference_mode()
def compute_features(encoder: LiteEncoder, data: CaptionDataset, batch_size: int = 32,
                     log: Callable[[str], None] = print) -> SplitFeatures:
    """Run lite's frozen towers over every photo and caption of ``data`` (photo grids, token states, dual vectors)."""
    towers, heads = encoder.towers, encoder.heads
    grids, image_vec = [], []
    start_time = time.time()
    for start in range(0, len(data.images), batch_size):
        pixels = towers.pixels([load_image(p) for p in data.images[start:start + batch_size]])
        grid = photo_grid(encoder, pixels)
        image_vec.append(heads.image(grid.mean((2, 3))).numpy())
        grids.append(grid.flatten(2).transpose(1, 2).numpy().astype(np.float16))
        if start // batch_size % 20 == 0:
            log(f"{data.name} photos {start + len(pixels)}/{len(data.images)} {time.time() - start_time:.0f}s")
    order = np.argsort([len(t) for t in data.texts], kind="stable")
    states: list[np.ndarray | None] = [None] * len(data.texts)
    text_vec = np.zeros((len(data.texts), heads.dim), dtype=np.float32)
    for start in range(0, len(order), 128):
        rows = order[start:start + 128]
        tokens = towers.tokenize([data.texts[j] for j in rows])
        hidden = towers.text(**tokens).last_hidden_state
        mask = tokens["attention_mask"]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)
        text_vec[rows] = heads.text(pooled).numpy()
        for i, j in enumerate(rows):
            states[j] = hidden[i, : int(mask[i].sum())].numpy().astype(np.float16)
    log(f"{data.name} features {time.time() - start_time:.0f}s")
    lengths = np.array([len(s) for s in states])
    return SplitFeatures(
        grids=np.concatenate(grids), tokens=np.concatenate(states), offsets=np.concatenate([[0], np.cumsum(lengths)]),
        image_vec=normalize(np.concatenate(image_vec)), text_vec=normalize(text_vec),
        text_image=np.asarray(data.text_image, dtype=np.int64),
    )


def cached_features(encoder: LiteEncoder, data: CaptionDataset, cache: Path,
                    log: Callable[[str], None] = print) -> SplitFeatures:
    """Load the features of ``data`` from ``cache/<fingerprint>-<split>-<n>`` or compute and store them there."""
    folder = Path(cache) / f"{encoder.fingerprint}-{data.name.replace('/', '-')}-{len(data.images)}-{len(data.texts)}"
    if (folder / "done").is_file():
        arrays = {name: np.load(folder / f"{name}.npy") for name in FEATURE_FILES}
        if np.array_equal(arrays["text_image"], data.text_image):
            return SplitFeatures(**arrays)
    feats = compute_features(encoder, data, log=log)
    folder.mkdir(parents=True, exist_ok=True)
    for name in FEATURE_FILES:
        np.save(folder / f"{name}.npy", getattr(feats, name))
    (folder / "done").write_text("ok\n")
    return feats


def photo_neighbours(image_vec: np.ndarray, text_vec: np.ndarray, text_image: np.ndarray, top: int,
                     block: int = 1024) -> np.ndarray:
    """(N, top) each photo's most confusable other photos for the dual encoder: the symmetric dual score
    between a photo and the mean of another photo's caption vectors, best first (the hard negatives)."""
    n = len(image_vec)
    centroid = normalize(np.stack([text_vec[g].mean(0) for g in caption_groups(text_image, n)]))
    top = min(top, n - 1)
    out = np.empty((n, top), dtype=np.int64)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        sims = 0.5 * (image_vec[rows] @ centroid.T + centroid[rows] @ image_vec.T)
        sims[np.arange(len(rows)), rows] = -np.inf
        cand = np.argpartition(-sims, top - 1, axis=1)[:, :top]
        order = np.argsort(-np.take_along_axis(sims, cand, 1), axis=1, kind="stable")
        out[rows] = np.take_along_axis(cand, order, 1)
    return out


def photo_groups(neighbours: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches: disjoint groups of ``size`` photos, each a random seed with (as far as they are
    still free) its hard-negative neighbours, so every caption meets the photos it is confused with."""
    n = len(neighbours)
    free = np.ones(n, dtype=bool)
    groups, leftovers = [], []
    for seed in rng.permutation(n):
        if not free[seed]:
            continue
        cand = neighbours[seed][free[neighbours[seed]]]
        group = np.concatenate([[seed], rng.permutation(cand)[: size - 1]])
        free[group] = False
        (groups if len(group) == size else leftovers).append(group)
    rest = np.concatenate(leftovers) if leftovers else np.zeros(0, dtype=np.int64)
    groups += [g for g in np.array_split(rest, max(1, -(-len(rest) // size))) if len(g) > 1]
    return [groups[i] for i in rng.permutation(len(groups))]


def caption_groups(text_image: np.ndarray, n_photos: int) -> list[np.ndarray]:
    """The caption indices of each photo."""
    order = np.argsort(text_image, kind="stable")
    return np.split(order, np.cumsum(np.bincount(text_image, minlength=n_photos))[:-1])


def pair_scorer(model: Any, feats: SplitFeatures, batch_size: int = 512
                ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A ``score_pairs(caption_rows, photo_rows) -> logits`` over ``feats`` with the torch model in eval mode,
    photo tokens rounded through float16 as they are stored in a collection."""
    with torch.inference_mode():
        model.eval()
        tokens = torch.cat([model.photo_tokens(feats.grid_batch(np.arange(s, min(s + 256, len(feats.grids)))))
                            for s in range(0, len(feats.grids), 256)]).half().float()

    @torch.inference_mode()
    def score_pairs(captions: np.ndarray, photos: np.ndarray) -> np.ndarray:
        order = np.argsort(feats.offsets[captions + 1] - feats.offsets[captions], kind="stable")
        out = np.empty(len(captions), dtype=np.float32)
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            states, mask = feats.text_batch(captions[rows])
            out[rows] = model.score(states, mask, tokens[photos[rows]]).numpy()
        return out

    return score_pairs


def dev_check(model: Any, dev: SplitFeatures, depth: int) -> dict[str, float]:
    """Fused dev figures at one depth with raw dual scores (the per-epoch model selection criterion)."""
    from ..rerank.evaluate import best_weights, dual_scores, fill_logits, needed_pairs

    t2i, i2t = dual_scores(dev.image_vec, dev.text_vec)
    logits = np.full(t2i.shape, np.nan, dtype=np.float32)
    fill_logits(logits, needed_pairs(t2i, i2t, depth), pair_scorer(model, dev))
    return best_weights(t2i, i2t, logits, dev.text_image, depth)


def _as_encoder(encoder_or_weights: LiteEncoder | str | Path) -> LiteEncoder:
    """A LiteEncoder, loading one from a weights file when given a path."""
    return encoder_or_weights if isinstance(encoder_or_weights, LiteEncoder) else LiteEncoder(Path(encoder_or_weights))


TINY_CONFIG = {"d": 16, "layers": 1, "heads": 2, "ffn": 2, "cells": 3, "pooled": True, "dropout": 0.0}


def train_reranker(encoder_or_weights: LiteEncoder | str | Path, dataset_path: str | Path, out_folder: str | Path,
                   epochs: int = 2, seed: int = 0, model_config: dict[str, Any] | None = None, group_size: int = 16,
                   top: int = 32, chunk: int = 40, lr: float = 7e-4, weight_decay: float = 0.05,
                   eval_depth: int = 16, cache: str | Path | None = None, tiny: bool = False, int8: bool = True,
                   max_steps: int | None = None, full_table: bool = True, images: str | Path | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a reranker for a lite model on ``dataset_path`` (train split), keep the best dev epoch, export it.

    Returns the figures: per-epoch losses and dev checks, and (``full_table``) the dev table of every depth
    with raw and normalised dual scores; the fusion weight stored is the best shared w at ``eval_depth``
    with normalised scores. ``tiny`` trains a 1-layer d=16 model for tests.
    """
    from ..rerank.model import RerankerModel
    from ..rerank.runtime import export_reranker_onnx

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    encoder = _as_encoder(encoder_or_weights)
    out_folder = Path(out_folder)
    cache = Path(cache) if cache else out_folder / "cache"
    feats, texts = {}, {}
    for split in ("train", "dev"):
        data = load_dataset(dataset_path, split, images)
        feats[split], texts[split] = cached_features(encoder, data, cache, log=log), data.texts
    train, dev = feats["train"], feats["dev"]
    n_photos = len(train.grids)
    top = min(top, n_photos - 1)
    groups = caption_groups(train.text_image, n_photos)
    neighbours = photo_neighbours(train.image_vec, train.text_vec, train.text_image, top)
    log(f"hard negatives: each of {n_photos} photos with its top {neighbours.shape[1]} confusable photos")

    config = {**(TINY_CONFIG if tiny else {}), **(model_config or {})}
    model = RerankerModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = len(photo_groups(neighbours, group_size, np.random.default_rng(seed)))
    steps = min(steps, max_steps or steps)
    total = steps * epochs
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / total))))
    history: list[dict[str, Any]] = []
    best: tuple[float, dict[str, torch.Tensor] | None, int] = (-np.inf, None, -1)
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        losses = []
        for step, photos in enumerate(photo_groups(neighbours, group_size, rng)[:steps]):
            caps = np.concatenate([groups[p] for p in photos])
            slot = np.full(n_photos, -1, dtype=np.int64)
            slot[photos] = np.arange(len(photos))
            owner = slot[train.text_image[caps]]
            tokens = model.photo_tokens(train.grid_batch(photos))
            by_length = np.argsort(train.offsets[caps + 1] - train.offsets[caps], kind="stable")
            parts = np.array_split(by_length, max(1, len(caps) // chunk))
            logits = torch.cat([model.score_matrix(*train.text_batch(caps[part]), tokens) for part in parts])
            logits = logits[torch.from_numpy(np.argsort(np.concatenate(parts)))]
            target = torch.from_numpy(owner)
            loss_t2i = F.cross_entropy(logits, target)
            positive = torch.zeros_like(logits, dtype=torch.bool)
            positive[torch.arange(len(caps)), target] = True
            neg_lse = logits.T.masked_fill(positive.T, -torch.inf).logsumexp(1)  # (photos,)
            pos = logits[positive]
            loss_i2t = (torch.logaddexp(pos, neg_lse[target]) - pos).mean()
            loss = loss_t2i + loss_i2t
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append((loss_t2i.item(), loss_i2t.item()))
            if step % 50 == 0:
                recent = np.mean(losses[-50:], axis=0)
                log(f"epoch {epoch} step {step}/{steps} loss t2i {recent[0]:.3f} i2t {recent[1]:.3f} "
                    f"{time.time() - t0:.0f}s")
        train_s = time.time() - t0
        check = dev_check(model, dev, eval_depth)
        mean = np.mean(losses, axis=0)
        row = {"epoch": epoch, "loss_t2i": float(mean[0]), "loss_i2t": float(mean[1]),
               "first_loss": float(sum(losses[0])), "last_loss": float(sum(losses[-1])),
               "train_s": round(train_s, 1), "eval_s": round(time.time() - t0 - train_s, 1), **check}
        history.append(row)
        log(json.dumps(row))
        if check["rsum"] > best[0]:
            best = (check["rsum"], {k2: v.clone() for k2, v in model.state_dict().items()}, epoch)
    model.load_state_dict(best[1])
    model.eval()
    figures: dict[str, Any] = {"history": history, "best_epoch": best[2], "config": model.config,
                               "group_size": group_size, "top": top, "lr": lr,
                               "epochs": epochs, "seed": seed, "eval_depth": eval_depth}
    weight = history[best[2]]["w"]
    model.save(out_folder / "reranker.safetensors", {"figures": figures})
    if full_table:
        from ..rerank.evaluate import rerank_table

        table, _ = rerank_table(dev.image_vec, dev.text_vec, dev.text_image, pair_scorer(model, dev),
                                train.image_vec, train.text_vec, depths=sorted({8, 16, 32, 64, eval_depth}))
        figures["dev"] = table
        chosen = next(r for r in table if r["scores"] == "norm" and r["n"] == eval_depth)
        weight = chosen["w"]
    figures["weight"] = weight
    model.save(out_folder / "reranker.safetensors", {"figures": figures})
    export_reranker_onnx(model, out_folder, int8=int8, weight=weight, depth=eval_depth,
                         extra={"model_fingerprint": encoder.fingerprint, "dev": figures})
    figures["words"] = _train_words(train, texts["train"], out_folder, log)
    return figures


def _train_words(train: SplitFeatures, texts: list[str], out_folder: Path, log: Callable[[str], None]
                 ) -> dict[str, Any] | None:
    """The caption-word classifier beside the reranker (rerank/words.py), from the train photos' pooled grids,
    at the share chosen for lite on Flickr8k dev; none when the captions have no word seen often enough."""
    from ..rerank.words import SHARE, WORDS_FILE
    from .train_words import train_words

    try:
        words, history = train_words(train.pooled_photos(), texts, train.text_image, share=SHARE)
    except ValueError as e:
        log(f"{e}: the reranker has no word classifier")
        return None
    words.save(out_folder / WORDS_FILE)
    log(f"word classifier: {len(words.vocab)} words, loss {history[0]:.4f} -> {history[-1]:.4f}")
    return {"words": len(words.vocab), "share": SHARE, "loss": history}
