"""The one interface every encoder backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from .multilingual import MultilingualTower


MIRROR = "+mirror"  # a model name ending so reads each photo twice, as it is and mirrored (Encoder.mirror)


def mirror_prepared(prepared: Any) -> Any:
    """The mirror image of a ``prepare_image`` result: a PIL image, or a (C, H, W) array or tensor."""
    if isinstance(prepared, Image.Image):
        return ImageOps.mirror(prepared)
    if isinstance(prepared, np.ndarray):
        return np.ascontiguousarray(prepared[..., ::-1])
    return prepared.flip(-1)


class Encoder(ABC):
    """Maps photos and texts into one L2-normalised embedding space.

    ``name`` is what loads the model again (``load_encoder(name)``); ``fingerprint`` identifies the
    exact weights, so a collection can refuse queries encoded by a different model.
    """

    name: str
    fingerprint: str
    dim: int
    batch_size: int = 32
    # Whether the encoder gives what a reranker reads (photo grids, token states); without it, no reranking.
    rerank_inputs: bool = False
    # Texts in other languages than the text tower reads go through this tower into the same space (attached by
    # load_encoder when the model has one; encoders/multilingual.py).
    multilingual: MultilingualTower | None = None
    # Read each photo twice, as it is and mirrored, and average the two unit vectors (a model named "NAME+mirror").
    mirror: bool = False

    @abstractmethod
    def _encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Encode one batch of ``prepare_image`` results to (N, dim) float32, not yet normalised."""

    @abstractmethod
    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode one batch of texts to (N, dim) float32, not yet normalised."""

    def prepare_image(self, image: Image.Image) -> Any:
        """Per-photo preprocessing (resize, crop, scale) that indexing runs in worker threads ahead of the
        model; ``_encode_images`` receives its results. By default the photo itself."""
        return image

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode RGB images to L2-normalised (N, dim) float32 vectors."""
        return self._run(lambda batch: self._photo_vectors([self.prepare_image(im) for im in batch]), list(images))

    def encode_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        """Encode photos already passed through ``prepare_image`` to L2-normalised vectors."""
        return self._run(self._photo_vectors, list(prepared))

    @property
    def photo_reading(self) -> str:
        """The weights and how photos are read (``mirror``): photo vectors of two encoders can be stored together
        only when these match."""
        return self.fingerprint + (MIRROR if self.mirror else "")

    def _photo_vectors(self, prepared: Sequence[Any]) -> np.ndarray:
        """``_encode_images``, averaged with the mirror images' when ``mirror`` is set (``with_mirror``)."""
        return self.with_mirror(self._encode_images(prepared), prepared)

    def with_mirror(self, vectors: np.ndarray, prepared: Sequence[Any]) -> np.ndarray:
        """``vectors`` of ``prepared`` photos; with ``mirror``, each unit vector averaged with its mirror image's: a
        second view ranks photos better (lite, Flickr8k test RSUM +2.4 through the default pipeline) for twice the
        photo tower's work per photo (docs/benchmarks.md)."""
        return self._mirror_mean(vectors, prepared) if self.mirror else vectors

    def caption_query_photos(self, vectors: np.ndarray, prepared: Sequence[Any]) -> np.ndarray:
        """``vectors`` of ``prepared`` photos in a query that ranks captions, each averaged with its mirror image's
        (a ``+mirror`` model's are that already). Only the query gains the second view, so nothing stored changes,
        for one more photo pass a query: lite, Flickr8k dev photo -> caption RSUM +2.8 through the default pipeline
        (docs/benchmarks.md). Photos ranking photos keep one view, so a stored photo still finds itself at 1.0."""
        return vectors if self.mirror else self._mirror_mean(vectors, prepared)

    def _mirror_mean(self, vectors: np.ndarray, prepared: Sequence[Any]) -> np.ndarray:
        mirrored = self._encode_images([mirror_prepared(p) for p in prepared])
        return normalize(normalize(vectors) + normalize(mirrored))

    def encode_prepared_grids(self, prepared: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(L2-normalised vectors, photo tower spatial features (N, C, H, W)) of prepared photos, for models
        whose reranker reads the grid; others raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} gives no spatial features")

    def token_states(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(text tower token states (B, L, C), attention mask (B, L) int64), for models whose reranker reads
        them; others raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} gives no token states")

    def encode_texts_with_states(self, texts: Sequence[str]
                                 ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray] | None]]:
        """L2-normalised vectors and each text's (token states (1, L_i, C), mask (1, L_i)), None for a text the
        multilingual tower encoded (the reranker reads the own tower's states only); backends that can give both
        from one model call override this."""
        texts = list(texts)
        return self._vectors_and_states(texts, self.foreign(texts))

    def _vectors_and_states(self, texts: list[str], foreign: np.ndarray
                            ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray] | None]]:
        """``encode_texts_with_states`` once ``foreign`` (which texts take the multilingual tower) is known."""
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(texts)
        native = np.flatnonzero(~foreign)
        if len(native):
            states, mask = self.token_states([texts[i] for i in native])
            for i, s, m, n in zip(native, states, mask, mask.sum(1), strict=True):
                out[i] = (s[None, :n], m[None, :n])
        return self._routed(texts, foreign), out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts to L2-normalised (N, dim) float32 vectors: texts in a language the model's own text tower
        does not read go through its multilingual tower (when it has one), the rest through its own.

        Texts are batched in order of length, so each batch pads to similar lengths (much less work
        for large caption sets); the result is in the caller's order.
        """
        texts = list(texts)
        return self._routed(texts, self.foreign(texts))

    def encode_captions(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of texts stored for photo queries to rank (a collection's captions, eval's photo -> caption
        direction): ``encode_texts``'s, blended with the multilingual tower's (``blend_captions``)."""
        texts = list(texts)
        foreign = self.foreign(texts)
        return self._blended(texts, foreign, self._routed(texts, foreign))

    def blend_captions(self, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """``encode_captions`` from ``encode_texts``'s ``vectors`` of ``texts``. With a multilingual tower, a text
        the own tower reads is encoded by both towers and the two vectors blended (the tower's ``caption_share``):
        two views of a caption rank it better than either alone, for the tower's time once per stored caption.
        Queries keep ``encode_texts``, so they cost nothing more, unless a search asks for this blend
        (``Ranking.both_towers``)."""
        texts = list(texts)
        return self._blended(texts, self.foreign(texts), vectors)

    def _blended(self, texts: list[str], foreign: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """``blend_captions`` once ``foreign`` (which texts the tower alone encodes) is known."""
        native = np.flatnonzero(~foreign)
        if not self.caption_recipe or not len(native):
            return vectors
        share, out = self.multilingual.caption_share, vectors.copy()
        out[native] = normalize((1 - share) * vectors[native]
                                + share * self.multilingual.encode([texts[i] for i in native]))
        return out

    @property
    def caption_recipe(self) -> str:
        """How ``encode_captions`` encodes now ("" when it is ``encode_texts``): a collection records it, and
        re-encodes the captions it stored another way (``sync.refresh_captions``)."""
        tower = self.multilingual
        return f"{tower.weights.id}:{tower.caption_share}" if tower is not None and tower.caption_share else ""

    def _routed(self, texts: list[str], foreign: np.ndarray) -> np.ndarray:
        """``encode_texts`` once ``foreign`` is known."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        native = np.flatnonzero(~foreign)
        if len(native):
            mine = [texts[i] for i in native]
            order = sorted(range(len(mine)), key=lambda i: len(mine[i]))
            out[native[order]] = self._run(self._encode_texts, [mine[i] for i in order])
        if foreign.any() and self.multilingual is not None:
            out[foreign] = self.multilingual.encode([t for t, f in zip(texts, foreign, strict=True) if f])
        return out

    def foreign(self, texts: Sequence[str]) -> np.ndarray:
        """Which texts the multilingual tower encodes (all False when the model has none)."""
        if self.multilingual is None or not len(texts):
            return np.zeros(len(texts), dtype=bool)
        return self.multilingual.foreign(list(texts), self.knows_words)

    def reads_natively(self, text: str) -> bool:
        """Whether the model's own text tower encoded ``text`` (not its multilingual tower): what reads that
        tower's token states, the reranker, applies only then."""
        return self.multilingual is None or not self.multilingual.took(text, self.knows_words)

    def knows_words(self, text: str) -> bool:
        """Whether the own text tower's vocabulary holds each word of ``text`` whole (``tokenizer.WholeWords``),
        which decides where a short text goes when it has a multilingual tower; True when the model cannot say."""
        return True

    def _run(self, fn, items: list) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.concatenate([fn(chunk) for chunk in _chunks(items, self.batch_size)]).astype(np.float32)
        return normalize(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows; zero rows stay zero instead of turning into NaN."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
