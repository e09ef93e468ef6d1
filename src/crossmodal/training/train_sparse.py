"""Training the sparse heads (search/sparse.py) on a model's dense vectors of a caption dataset.

The vocabulary is the WordPiece tokens of the training captions (seen at least ``MIN_COUNT`` times, common
English words and punctuation left out). Each head is a linear map to it followed by ``log(1 + relu)``.
The loss, per batch of photos with one of their captions each:
- contrastive (InfoNCE both ways) on the sparse dot products, as the dense model was trained;
- lexical grounding (LexLIP): each side's pre-activation scores, as a softmax over the vocabulary, put
  their mass on the words of the captions (a caption's own words; a photo's: all its captions'), so a
  dimension means its word and a query's own words find photos described with them;
- FLOPS regularisation (SPLADE): the squared mean weight of each term, which keeps postings short.
Epochs are chosen on dev RSUM (sparse scores alone), and the best epoch is kept.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..collection.atomic import atomic_write
from ..collection.keywords import STOPWORDS
from ..encoders.base import Encoder
from ..evaluation.metrics import evaluate_embeddings
from ..evaluation.runner import dataset_sparse, embed_dataset
from ..rerank.words import bags, lite_tokenizer, position_table
from ..search.pipeline import Ranking, SetScores
from ..search.sparse import SparseHeads
from ..sources.datasets import CaptionDataset

MIN_COUNT = 3
_WORDLIKE = re.compile(r"^(##)?[a-z0-9]+$")


@dataclass
class SparseConfig:
    """What training takes: epochs, batch size (photos), learning rate, and the weights of the loss terms."""

    epochs: int = 12
    batch_size: int = 256
    lr: float = 5e-3
    grounding: float = 0.5
    flops: float = 1e-3
    top_image: int = 64
    top_text: int = 32
    seed: int = 0


@dataclass
class Features:
    """A split's dense vectors: photos (N, dim), captions (M, dim), and each caption's photo index."""

    images: np.ndarray
    texts: np.ndarray
    text_image: np.ndarray

    @property
    def caption_vectors(self) -> np.ndarray:
        """The captions as photo queries rank them (eval's ``Embedded.caption_vectors``): their own vectors here."""
        return self.texts


class Heads(nn.Module):
    """The two linear heads of the sparse model (training form)."""

    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.image = nn.Linear(dim, vocab)
        self.text = nn.Linear(dim, vocab)
        for layer in (self.image, self.text):  # inputs are unit vectors: scores start as N(0, 0.1^2), half active
            nn.init.normal_(layer.weight, std=0.1)
            nn.init.zeros_(layer.bias)
        self.scale = nn.Parameter(torch.tensor(10.0))  # dot products of sparse weights -> logits

    def forward(self, x: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-activation scores, sparse weights) of dense vectors ``x``."""
        logits = getattr(self, side)(x)
        return logits, torch.log1p(torch.relu(logits))


def vocabulary(token_ids: list[list[int]], tokens: list[str]) -> np.ndarray:
    """WordPiece ids worth a dimension: word-like tokens seen ``MIN_COUNT`` times, common words left out."""
    counts = Counter(i for ids in token_ids for i in set(ids))
    keep = [i for i, n in counts.items()
            if n >= MIN_COUNT and _WORDLIKE.match(tokens[i]) and tokens[i] not in STOPWORDS]
    return np.array(sorted(keep), dtype=np.int64)


def _targets(rows: list[np.ndarray], vocab: int) -> torch.Tensor:
    """A (len(rows), vocab) matrix of word distributions (uniform over each row's words)."""
    out = torch.zeros(len(rows), vocab)
    for r, words in enumerate(rows):
        if len(words):
            out[r, torch.from_numpy(words)] = 1.0 / len(words)
    return out


def _grounding(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    has = target.sum(1) > 0
    return -(target[has] * torch.log_softmax(logits[has], dim=1)).sum(1).mean() if has.any() else logits.sum() * 0


def _top(weights: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's ``k`` largest weights, the rest zero (what inference keeps; gradients reach those kept)."""
    kept = torch.zeros_like(weights).scatter_(1, weights.topk(min(k, weights.shape[1]), dim=1).indices, 1.0)
    return weights * kept


def _flops(weights: torch.Tensor) -> torch.Tensor:
    return (weights.mean(0) ** 2).sum()


def train_sparse(train: Features, train_bags: list[np.ndarray], dev: Features, vocab: np.ndarray,
                 tokens: list[str], fingerprint: str, config: SparseConfig,
                 log: Callable[[str], None] = print) -> tuple[SparseHeads, list[dict[str, float]]]:
    """Train the heads on ``train`` (``train_bags``: each caption's vocabulary positions); returns the heads of
    the best dev epoch and each epoch's figures."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n_vocab = len(vocab)
    model = Heads(train.images.shape[1], n_vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    images, texts = torch.from_numpy(train.images), torch.from_numpy(train.texts)
    captions_of = [np.flatnonzero(train.text_image == i) for i in range(len(train.images))]
    photo_bags = [np.unique(np.concatenate([train_bags[j] for j in c])) if len(c) else np.zeros(0, np.int64)
                  for c in captions_of]
    steps = config.epochs * -(-len(images) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    best, history = None, []
    for epoch in range(config.epochs):
        model.train()
        order = rng.permutation(len(images))
        for start in range(0, len(order), config.batch_size):
            photos = order[start:start + config.batch_size]
            captions = np.array([rng.choice(captions_of[p]) for p in photos])
            logit_i, s_i = model(images[photos], "image")
            logit_t, s_t = model(texts[captions], "text")
            s_i, s_t = _top(s_i, config.top_image), _top(s_t, config.top_text)  # as the index will hold them
            scores = model.scale * s_t @ s_i.T
            labels = torch.arange(len(photos))
            contrastive = (nn.functional.cross_entropy(scores, labels)
                           + nn.functional.cross_entropy(scores.T, labels)) / 2
            grounding = (_grounding(logit_t, _targets([train_bags[c] for c in captions], n_vocab))
                         + _grounding(logit_i, _targets([photo_bags[p] for p in photos], n_vocab))) / 2
            loss = contrastive + config.grounding * grounding + config.flops * (_flops(s_i) + _flops(s_t))
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        heads = export(model, vocab, tokens, fingerprint, config)
        figures = {"epoch": epoch, "loss": loss.item(), **sparse_metrics(heads, dev)}
        history.append(figures)
        log(f"epoch {epoch}: loss {figures['loss']:.3f}, dev RSUM {figures['rsum']:.2f}, "
            f"terms per photo {figures['image_terms']:.1f}, per caption {figures['text_terms']:.1f}")
        if best is None or figures["rsum"] > best[1]["rsum"]:
            best = (heads, figures)
    return best[0], history


def export(model: Heads, vocab: np.ndarray, tokens: list[str], fingerprint: str, config: SparseConfig) -> SparseHeads:
    """The trained heads in inference form (numpy)."""
    with torch.no_grad():
        weight = {side: getattr(model, side).weight.T.numpy().copy() for side in ("image", "text")}
        bias = {side: getattr(model, side).bias.numpy().copy() for side in ("image", "text")}
    return SparseHeads(fingerprint, vocab, [tokens[i] for i in vocab], weight, bias,
                       {"image": config.top_image, "text": config.top_text})


def sparse_metrics(heads: SparseHeads, split: Features) -> dict[str, float]:
    """RSUM of the sparse retriever on ``split`` (as eval ranks it), and the mean terms kept per photo and caption."""
    score = SetScores(split.images, split.texts, Ranking(norm=False, rerank=0, retriever="sparse"),
                      sparse=dataset_sparse(heads, split))
    metrics = evaluate_embeddings(split.images, split.texts, split.text_image, score).metrics((1, 5, 10))
    s_i, s_t = heads.encode(split.images, "image"), heads.encode(split.texts, "text")
    return {"rsum": metrics["rsum"], "image_terms": s_i.nnz / s_i.shape[0], "text_terms": s_t.nnz / s_t.shape[0]}


def split_features(encoder: Encoder, data: CaptionDataset, cache: Path) -> Features:
    """The model's vectors of a split, computed once and cached at ``cache`` (photos that do not decode are left
    out with their captions)."""
    if cache.is_file():
        with np.load(cache) as f:
            return Features(f["images"], f["texts"], f["text_image"])
    emb = embed_dataset(encoder, data, progress=False)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, lambda f: np.savez(f, images=emb.images, texts=emb.texts, text_image=emb.data.text_image))
    return Features(emb.images, emb.texts, emb.data.text_image)


def train_lite_sparse(model: str, data: str, out: Path, cache: Path, config: SparseConfig,
                      log: Callable[[str], None] = print, images: Path | None = None) -> list[dict[str, float]]:
    """Train sparse heads for a lite model on ``data``'s train split (epochs chosen on dev) and write them to
    ``out`` (a .npz that `find_sparse` loads: a collection's ``sparse.npz``, or lite's shipped file)."""
    from ..encoders import load_encoder
    from ..sources.datasets import load_dataset

    encoder = load_encoder(model)
    train_data, dev_data = load_dataset(data, "train", images), load_dataset(data, "dev", images)
    train = split_features(encoder, train_data, cache / f"sparse-{encoder.fingerprint}-train.npz")
    dev = split_features(encoder, dev_data, cache / f"sparse-{encoder.fingerprint}-dev.npz")
    tokenize, tokens = lite_tokenizer()
    if len(train.text_image) != len(train_data.texts):
        raise ValueError("some training photos do not decode: sparse training needs every photo of the split")
    ids = tokenize(train_data.texts)
    vocab = vocabulary(ids, tokens)
    log(f"vocabulary: {len(vocab)} WordPiece tokens of the training captions")
    caption_bags = bags(ids, position_table(vocab))
    heads, history = train_sparse(train, caption_bags, dev, vocab, tokens, encoder.fingerprint, config, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, heads.save)
    return history
