"""A saved tokenizer.json run by the tokenizers library: the tokens transformers' fast tokenizer gives with
the same padding and truncation, without importing transformers (about a second of a cold search)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# The arrays a BERT-style text graph takes, and the Encoding attribute holding each.
FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class FastTokenizer:
    """Texts -> ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, right-padded to the longest
    text or to ``max_length`` when ``padding="max_length"``), as ``tokenizer(texts, **kwargs)`` would give."""

    def __init__(self, folder: Path, padding: bool | str = True, truncation: bool = True,
                 max_length: int | None = None) -> None:
        from tokenizers import Tokenizer

        config = _read_config(Path(folder) / "tokenizer_config.json")
        self.tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        max_length = max_length or config.get("model_max_length")
        if truncation and max_length:
            self.tokenizer.enable_truncation(int(max_length), direction=config.get("truncation_side", "right"))
        else:
            self.tokenizer.no_truncation()
        if not padding:
            raise ValueError("FastTokenizer pads its batches: padding must be True or 'max_length'")
        pad = config.get("pad_token") or "[PAD]"
        pad = pad["content"] if isinstance(pad, dict) else str(pad)
        pad_id = self.tokenizer.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"the tokenizer has no padding token {pad!r}")
        self.tokenizer.enable_padding(direction=config.get("padding_side", "right"), pad_id=pad_id,
                                      pad_type_id=int(config.get("pad_token_type_id", 0)), pad_token=pad,
                                      length=int(max_length) if padding == "max_length" else None)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        return {name: np.array([getattr(e, field) for e in encodings], dtype=np.int64).reshape(len(texts), -1)
                for name, field in FIELDS.items()}


class WholeWords:
    """Whether a WordPiece vocabulary holds every word of a text whole, as its tokenizer normalises and splits the
    text. An English tower reads a word it lacks in pieces; in a short query that is mostly another language ("hund"
    -> "hu", "##nd"), which language identification cannot tell from one word (encoders/languages.py)."""

    def __init__(self, tokenizer: Any) -> None:
        self.normalizer, self.pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
        self.words = frozenset(t for t in tokenizer.get_vocab() if not t.startswith("##"))

    def __call__(self, text: str) -> bool:
        text = self.normalizer.normalize_str(text) if self.normalizer is not None else text
        pieces = (self.pre_tokenizer.pre_tokenize_str(text) if self.pre_tokenizer is not None
                  else [(w, None) for w in text.split()])
        return all(word in self.words for word, _ in pieces)


def _read_config(path: Path) -> dict[str, Any]:
    """tokenizer_config.json's settings, or none when it is missing."""
    return json.loads(path.read_text()) if path.is_file() else {}
