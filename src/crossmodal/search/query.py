"""Queries: weighted sums of text and photo terms, e.g. "beach" - "people" + 0.5 * "sunset"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..encoders.base import Encoder, normalize
from ..sources.images import is_image_path, load_image
from .pipeline import Query


@dataclass(frozen=True)
class Term:
    """One part of a query: a text or a photo path, with a weight (negative to steer away)."""

    value: str | Path
    weight: float = 1.0
    is_image: bool = False

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> Term:
        return cls(text, weight, False)

    @classmethod
    def image(cls, path: str | Path, weight: float = 1.0) -> Term:
        return cls(Path(path), weight, True)


def parse_term(spec: str, sign: float = 1.0) -> Term:
    """Parse ``[WEIGHT:]VALUE``; VALUE is a photo when it names an existing image file, else text.

    ``0.5:sunset`` -> text "sunset" weight 0.5; ``./me.jpg`` -> that photo, weight 1.
    """
    weight = 1.0
    head, sep, rest = spec.partition(":")
    if sep:
        try:
            weight = float(head)
            spec = rest
        except ValueError:
            pass
    path = Path(spec).expanduser()
    if is_image_path(path) and path.is_file():
        return Term.image(path, sign * weight)
    return Term.text(spec, sign * weight)


def query_vector(encoder: Encoder, terms: list[Term], max_pixels: int | None = None) -> np.ndarray:
    """Encode every term and combine them into one L2-normalised query vector."""
    return encode_query(encoder, terms, max_pixels).vector


def encode_query(encoder: Encoder, terms: list[Term], max_pixels: int | None = None,
                 both_towers: bool = False, ranks_texts: bool = False) -> Query:
    """Encode every term into one query: the combined L2-normalised vector, its modality (text, image or
    mixed) and, for a query of one text or one photo, that text or photo (the reranker reads it).
    ``both_towers``: texts as ``Ranking.both_towers`` says; ``ranks_texts``: the query ranks captions, so its
    photos are read with their mirror images (``Encoder.caption_query_photos``)."""
    if not terms:
        raise ValueError("empty query: give a text, an image, or both")
    texts = [t for t in terms if not t.is_image]
    images = [t for t in terms if t.is_image]
    for t in texts:
        if not str(t.value).strip():
            raise ValueError("empty text in the query")
    parts: list[tuple[float, np.ndarray]] = []
    photos = []
    states = None
    if texts:
        values = [str(t.value) for t in texts]
        if len(terms) == 1 and encoder.rerank_inputs:  # the reranker reads a lone text's token states: same pass
            vecs, (states,) = encoder.encode_texts_with_states(values)
        else:
            vecs = encoder.encode_texts(values)
        if both_towers:
            vecs = encoder.blend_captions(values, vecs)
        parts += [(t.weight, v) for t, v in zip(texts, vecs, strict=True)]
    grid = None
    if images:
        kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
        photos = [load_image(t.value, **kwargs) for t in images]
        prepared = [encoder.prepare_image(photo) for photo in photos]
        if len(terms) == 1 and encoder.rerank_inputs:  # the reranker reads a lone photo's grid: same pass
            vecs, grid = encoder.encode_prepared_grids(prepared)
        else:
            vecs = encoder.encode_prepared(prepared)
        if ranks_texts:
            vecs = encoder.caption_query_photos(vecs, prepared)
        parts += [(t.weight, v) for t, v in zip(images, vecs, strict=True)]
    ordered = [(t.weight, False) for t in texts] + [(t.weight, True) for t in images]
    tower = bool(texts) and not images and not any(encoder.reads_natively(str(t.value)) for t in texts)
    return Query(combine(parts, encoder.dim), *modality_of(ordered, [str(t.value) for t in texts] + photos),
                 states=states, grid=grid, tower=tower)


def text_queries(encoder: Encoder, texts: Sequence[str], states: bool = False,
                 both_towers: bool = False) -> list[Query]:
    """One text query per text, encoded together; with ``states``, also each text's token states for the
    reranker, from the same model pass (encoders that give none leave them to the reranker's scorer);
    ``both_towers`` as ``Ranking.both_towers`` says."""
    if any(not t.strip() for t in texts):
        raise ValueError("empty text in the queries")
    if states and encoder.rerank_inputs:
        vectors, token_states = encoder.encode_texts_with_states(list(texts))
    else:
        vectors, token_states = encoder.encode_texts(list(texts)), [None] * len(texts)
    if both_towers:
        vectors = encoder.blend_captions(texts, vectors)
    return [Query(v, "text", source=t, states=s, tower=not encoder.reads_natively(t))
            for v, t, s in zip(vectors, texts, token_states, strict=True)]


def modality_of(terms: Sequence[tuple[float, bool]], values: Sequence[object]) -> tuple[str, object]:
    """(modality, source) of a query from its (weight, is_image) terms and their values (texts first):
    one positive term gives its modality and value; anything else is ``mixed`` with no source."""
    if len(terms) == 1 and terms[0][0] > 0:
        return ("image" if terms[0][1] else "text"), values[0]
    if terms and all(w > 0 for w, _ in terms) and len({im for _, im in terms}) == 1:
        return ("image" if terms[0][1] else "text"), None
    return "mixed", None


def combine(parts: Sequence[tuple[float, np.ndarray]], dim: int) -> np.ndarray:
    """Weighted sum of encoded query terms, L2-normalised; a sum that cancels out is refused."""
    total = np.zeros(dim, dtype=np.float32)
    for weight, vector in parts:
        total += np.float32(weight) * np.asarray(vector, dtype=np.float32)
    if not np.any(total):
        raise ValueError("the query terms cancel out: nothing left to search for")
    return normalize(total)
