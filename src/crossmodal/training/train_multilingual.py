"""Training a model's multilingual query tower (encoders/multilingual.py) from a table of captions in several
languages (``image``, ``caption``, ``lang``, ``group``, ``split``), e.g. Multi30K.

The frozen multilingual encoder reads every caption; the head learns to map its vector into the model's space
with two losses:
- contrastive (InfoNCE both ways, captions of one photo never each other's negatives) against the model's own
  photo vectors, which stay fixed: the query tower learns to find photos, in every language it sees;
- distillation (Reimers and Gurevych 2020): where a caption has an English translation in its group, its mapped
  vector should equal the model's own vector of that translation, so every language lands where English does.
The model's photo vectors, text tower and fingerprint are not touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..collection.atomic import atomic_write
from ..encoders.base import Encoder
from ..encoders.multilingual import DEFAULT_SOURCES, HEAD_FILE, SOURCE_DIMS, MultilingualHead, source_vectors
from ..evaluation.metrics import per_language_metrics, retrieval_ranks
from ..sources.datasets import CaptionDataset
from ..sources.images import load_image

ENGLISH = "en"
# A text language identification does not call English keeps the own tower when its own and mapped vectors agree
# to this cosine (English the identifier took for another language); chosen on Multi30K dev for lite.
DEFAULT_AGREEMENT = 0.7


@dataclass
class MultilingualConfig:
    """Epochs, batch size (captions), learning rate, hidden width, and the weight of the distillation loss."""

    epochs: int = 10
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.01
    hidden: int = 1024
    dropout: float = 0.1
    temperature: float = 0.08
    distill: float = 1.0
    agreement: float = DEFAULT_AGREEMENT
    seed: int = 0


@dataclass
class Pairs:
    """What the head learns from: each caption's source vector, its photo's index in ``photos``, and the
    model's own vector of its English translation (``has_teacher`` False where the group has none)."""

    source: np.ndarray
    photo: np.ndarray
    photos: np.ndarray
    teacher: np.ndarray
    has_teacher: np.ndarray


class Head(nn.Module):
    """Training form of ``MultilingualHead``: a linear map plus a one-hidden-layer MLP, L2-normalised."""

    def __init__(self, dim: int, hidden: int, dropout: float,
                 source_dim: int = sum(SOURCE_DIMS[s] for s in DEFAULT_SOURCES)) -> None:
        super().__init__()
        self.lin = nn.Linear(source_dim, dim)
        self.mlp = nn.Sequential(nn.Linear(source_dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.lin(x) + self.mlp(x), dim=-1)


def fit_head(pairs: Pairs, config: MultilingualConfig) -> Head:
    """Train a head on ``pairs`` (one-cycle schedule over ``config.epochs``)."""
    torch.manual_seed(config.seed)
    source = torch.from_numpy(pairs.source.astype(np.float32))
    photos = torch.from_numpy(pairs.photos.astype(np.float32))
    photo = torch.from_numpy(pairs.photo.astype(np.int64))
    teacher = torch.from_numpy(pairs.teacher.astype(np.float32))
    has_teacher = torch.from_numpy(pairs.has_teacher)
    head = Head(photos.shape[1], config.hidden, config.dropout, source.shape[1])
    batch = min(config.batch_size, len(source))
    steps = max(1, len(source) // batch)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * steps)
    head.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(source))
        for step in range(steps):
            rows = order[step * batch:(step + 1) * batch]
            loss = _loss(head(source[rows]), photos[photo[rows]], photo[rows], teacher[rows], has_teacher[rows],
                         config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


def _loss(mapped: torch.Tensor, photos: torch.Tensor, owner: torch.Tensor, teacher: torch.Tensor,
          has_teacher: torch.Tensor, config: MultilingualConfig) -> torch.Tensor:
    logits = mapped @ photos.T / config.temperature
    same_photo = (owner[:, None] == owner[None]) & ~torch.eye(len(owner), dtype=torch.bool)
    logits = logits.masked_fill(same_photo, -1e4)
    target = torch.arange(len(owner))
    loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
    if config.distill and has_teacher.any():
        loss = loss + config.distill * (1 - (mapped[has_teacher] * teacher[has_teacher]).sum(1)).mean()
    return loss


def export(head: Head, fingerprint: str, config: MultilingualConfig, extra: dict[str, str] | None = None
           ) -> MultilingualHead:
    """The trained head in its numpy form, with what it was trained for and how."""
    tensors = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in head.state_dict().items()}
    metadata = {"model_fingerprint": fingerprint, "agreement": str(config.agreement),
                "sources": ",".join(DEFAULT_SOURCES),
                "config": str(asdict(config)), **(extra or {})}
    return MultilingualHead(tensors, metadata)


def save_head(head: MultilingualHead, path: Path) -> None:
    """Write the head as float16 safetensors with its metadata, atomically (half the bytes; it computes in float32)."""
    from safetensors.numpy import save

    tensors = {k: v.astype(np.float16) for k, v in head.tensors.items()}
    atomic_write(path, lambda f: f.write(save(tensors, metadata=head.metadata)))


def table_pairs(encoder: Encoder, data: CaptionDataset, photos: np.ndarray | None = None,
                source: np.ndarray | None = None) -> Pairs:
    """Pairs of one split: the encoder's photo vectors (or ``photos``), its own vectors of each group's English
    caption as teachers, and the multilingual encoder's vectors of every caption (or ``source``)."""
    if photos is None:
        photos = encoder.encode_images([load_image(p) for p in data.images])
    if source is None:
        source = source_vectors(data.texts)
    langs = data.langs or [ENGLISH] * len(data.texts)
    groups = data.groups or [str(i) for i in range(len(data.texts))]
    english = {g: t for t, lang, g in zip(data.texts, langs, groups, strict=True) if lang == ENGLISH}
    wanted = sorted(set(english.values()))
    own = dict(zip(wanted, own_text_vectors(encoder, wanted), strict=True))
    teacher = np.zeros((len(data.texts), photos.shape[1]), dtype=np.float32)
    has_teacher = np.zeros(len(data.texts), dtype=bool)
    for i, g in enumerate(groups):
        if g in english:
            teacher[i], has_teacher[i] = own[english[g]], True
    return Pairs(source, np.asarray(data.text_image), photos, teacher, has_teacher)


def own_text_vectors(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """The encoder's own text tower on ``texts``, whatever multilingual tower it has."""
    tower, encoder.multilingual = encoder.multilingual, None
    try:
        return encoder.encode_texts(texts)
    finally:
        encoder.multilingual = tower


def language_metrics(head: MultilingualHead, pairs: Pairs, langs: list[str]) -> dict[str, dict[str, float]]:
    """Per-language retrieval metrics of the head's vectors of every caption (no routing) against the photos."""
    texts = head(pairs.source)
    t2i = retrieval_ranks(pairs.photos, texts, pairs.photo)[1]
    return per_language_metrics(pairs.photos, texts, pairs.photo, langs, t2i)


def train_multilingual(encoder: Encoder, train: CaptionDataset, dev: CaptionDataset | None, out: Path,
                       config: MultilingualConfig, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train the encoder's multilingual tower on ``train``, report ``dev`` per language, write ``out/HEAD_FILE``."""
    log(f"encoding {len(train.texts)} training captions and {len(train.images)} photos")
    head = export(fit_head(table_pairs(encoder, train), config), encoder.fingerprint, config,
                  {"trained_on": train.name})
    out.mkdir(parents=True, exist_ok=True)
    save_head(head, out / HEAD_FILE)
    report: dict[str, Any] = {"config": asdict(config)}
    if dev is not None and dev.texts:
        langs = dev.langs or [ENGLISH] * len(dev.texts)
        report["dev_by_lang"] = language_metrics(head, table_pairs(encoder, dev), langs)
        for lang, m in report["dev_by_lang"].items():
            log(f"dev {lang}: RSUM {m['rsum']:.1f}, text->image R@10 {m['t2i_R@10']:.1f}")
    return report
