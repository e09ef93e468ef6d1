"""Nearest-neighbour normalisation (Chowdhury et al., EMNLP 2024): less hubness, no weights changed.

Some items (hubs) score high for almost every query. Each item gets a bias, the mean of its ``k``
highest similarities to a reference bank of queries of the other modality (captions for photos,
photos for captions), and a search subtracts ``share`` times that bias from the item's score.
The bias is computed once, when an item is stored. To keep every index kind exact about it, an
index stores ``[vector, -bias, 0...]`` and a query is ``[query, share, 0...]``: the inner product is
the normalised score, and ``share`` 0 gives the plain score from the same index.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..collection.atomic import atomic_write
from ..defaults import BANK_SHARE as SHARE
from ..defaults import BANK_TOP_K as TOP_K

if TYPE_CHECKING:
    from ..encoders.base import Encoder

BANK_FILE = "bank.npz"
# The query's modality whose reference vectors rank items of each kind.
REFERENCE_OF = {"image": "texts", "text": "images"}
# What ships with models: banks (lite's: Flickr8k train captions and photos) and rerankers.
SHIPPED = Path(__file__).resolve().parent.parent / "encoders" / "weights"


class Bank:
    """Reference query vectors of one model: caption vectors (rank photos), photo vectors (rank captions).

    Opening a bank file reads only its header; the vectors load on first use.
    """

    def __init__(self, texts: np.ndarray | None, images: np.ndarray | None, fingerprint: str, top_k: int = TOP_K,
                 share: float = SHARE, id: str | None = None, path: Path | None = None) -> None:
        self._vectors = None if texts is None or images is None else {
            "texts": np.asarray(texts, dtype=np.float32), "images": np.asarray(images, dtype=np.float32)}
        self.fingerprint, self.top_k, self.share, self.path = fingerprint, top_k, share, path
        self.id = id or self._content_id()

    def vectors(self, name: str) -> np.ndarray:
        """``texts`` or ``images``: the reference vectors (float32)."""
        if self._vectors is None:
            with np.load(self.path) as f:
                self._vectors = {k: f[k].astype(np.float32) for k in ("texts", "images")}
        return self._vectors[name]

    def _content_id(self) -> str:
        digest = hashlib.sha256()
        for name in ("texts", "images"):
            digest.update(np.ascontiguousarray(self.vectors(name).astype(np.float16)).tobytes())
        digest.update(f"{self.top_k}".encode())
        return digest.hexdigest()[:16]

    def biases(self, kind: str, vectors: np.ndarray, block: int = 4096) -> np.ndarray:
        """Each item's bias: mean of its ``top_k`` inner products with the reference queries of ``kind``."""
        reference = self.vectors(REFERENCE_OF[kind])
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        k = min(self.top_k, len(reference))
        out = np.zeros(len(vectors), dtype=np.float32)
        if k == 0:
            return out
        for start in range(0, len(vectors), block):
            sims = vectors[start:start + block] @ reference.T
            best = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
            out[start:start + block] = best.mean(axis=1)
        return out

    def save(self, path: Path) -> Path:
        """Write the bank (float16 vectors) atomically."""
        atomic_write(path, lambda f: np.savez(
            f, texts=self.vectors("texts").astype(np.float16), images=self.vectors("images").astype(np.float16),
            fingerprint=np.array(self.fingerprint), top_k=np.array(self.top_k), share=np.array(self.share),
            id=np.array(self.id)))
        return path

    @classmethod
    def open(cls, path: Path) -> Bank:
        """A bank file's header (the vectors load when first needed)."""
        with np.load(path) as f:
            return cls(None, None, fingerprint=str(f["fingerprint"]), top_k=int(f["top_k"]), share=float(f["share"]),
                       id=str(f["id"]), path=Path(path))


def find_bank(fingerprint: str, *candidates: Path) -> Bank | None:
    """The first bank for the model with ``fingerprint`` among ``candidates`` (e.g. a collection's own
    ``bank.npz`` from ``crossmodal bank``) and the banks models ship with; None (no normalisation) if none."""
    for path in (*candidates, *sorted(SHIPPED.glob("*-bank.npz"))):
        if path.is_file():
            try:
                bank = Bank.open(path)
            except (OSError, ValueError, KeyError):
                continue
            if bank.fingerprint == fingerprint:
                return bank
    return None


def index_dim(dim: int, kind: str) -> int:
    """Width of the vectors an index of ``kind`` stores: the vector, the bias, zeros to the kind's alignment
    (binary codes need multiples of 8; IVF-PQ sub-quantizers need a width its byte count divides)."""
    align = 64 if kind == "ivfpq" else 8 if kind == "binary" else 1
    return -(-(dim + 1) // align) * align


def augment(vectors: np.ndarray, bias: np.ndarray | float, width: int) -> np.ndarray:
    """Stored vectors as an index holds them: ``[vector, -bias, 0...]`` (``width`` columns)."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    out = np.zeros((len(vectors), width), dtype=np.float32)
    out[:, : vectors.shape[1]] = vectors
    out[:, vectors.shape[1]] = -np.asarray(bias, dtype=np.float32)
    return out


def augment_queries(queries: np.ndarray, share: float, width: int) -> np.ndarray:
    """Queries as an index takes them: ``[query, share, 0...]``; ``share`` 0 is the plain score."""
    return augment(queries, -share, width)


def build_bank(encoder: Encoder, texts: list[str], images: list[Path], progress: bool = True,
               limit: int | None = None, seed: int = 0, top_k: int = TOP_K, share: float = SHARE) -> Bank:
    """Encode reference captions and photos (at most ``limit`` of each, drawn at random) into a bank for
    ``encoder``'s model, normalising with ``top_k`` and ``share`` (choose them on a dev split:
    benchmarks/tune_pipeline.py). Photos that do not decode are skipped with a note."""
    if top_k < 1 or not 0.0 <= share <= 2.0:
        raise ValueError(f"a bank needs top_k >= 1 and a share from 0 to 2, not {top_k} and {share}")
    from tqdm import tqdm

    from ..sources.images import ImageError, load_image

    rng = np.random.default_rng(seed)
    if limit is not None:
        texts = [texts[i] for i in sorted(rng.choice(len(texts), min(limit, len(texts)), replace=False))]
        images = [images[i] for i in sorted(rng.choice(len(images), min(limit, len(images)), replace=False))]
    texts = [t for t in texts if t.strip()]
    if not texts or not images:
        raise ValueError("a bank needs reference captions and photos (give both)")
    vectors = []
    for start in tqdm(range(0, len(images), encoder.batch_size), desc="bank photos", disable=not progress):
        batch = []
        for path in images[start:start + encoder.batch_size]:
            try:
                batch.append(load_image(path))
            except ImageError as e:
                tqdm.write(f"skipped {path}: {e}")
        if batch:
            vectors.append(encoder.encode_images(batch))
    if not vectors:
        raise ValueError("none of the bank's photos could be read")
    return Bank(encoder.encode_texts(texts), np.concatenate(vectors), fingerprint=encoder.fingerprint, top_k=top_k,
                share=share)
