"""The rerank stage's inputs: which reranker a model has, and scorers that feed it a query with its
candidates, from a collection (search) or from a dataset held in memory (eval).

The reranker reads the photo tower's spatial grid (stored per photo as the reranker's tokens when the
photo is indexed) and the text tower's token states (computed when needed: the query's, or the N
candidate captions'). A photo query ranking captions and a caption ranking photos are reranked; a
photo ranking photos, or a mixed query, is not.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .normalise import SHIPPED
from .pipeline import Query, SetScorer

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from ..collection.store import ItemStore
    from ..encoders.base import Encoder
    from ..rerank.runtime import Reranker
    from ..sources.datasets import CaptionDataset
    from .pipeline import Scorer

RERANKER_DIR = "reranker"  # a collection's own reranker (``crossmodal train --reranker --out COLLECTION/reranker``)


def find_reranker(fingerprint: str, *candidates: Path) -> Reranker | None:
    """The first reranker trained for the model with ``fingerprint`` (its ``reranker.json`` says which) among
    the ``candidates`` folders and the rerankers models ship with; None if there is none."""
    for config in [*(Path(c) / "reranker.json" for c in candidates), *sorted(SHIPPED.glob("reranker-*/reranker.json"))]:
        try:
            if json.loads(config.read_text()).get("model_fingerprint") == fingerprint:
                return _load(config.parent)
        except (OSError, ValueError):
            continue
    return None


@lru_cache(maxsize=4)
def _load(folder: Path) -> Reranker:
    from ..rerank.runtime import Reranker

    return Reranker.load(folder)


def pad_states(states: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack token states (L_i, C) of different lengths, right-padded with zeros, and their (B, L) int64 mask."""
    longest = max(len(x) for x in states)
    out = np.zeros((len(states), longest, states[0].shape[-1]), dtype=np.float32)
    mask = np.zeros((len(states), longest), dtype=np.int64)
    for i, x in enumerate(states):
        out[i, : len(x)], mask[i, : len(x)] = x, 1
    return out, mask


def photo_query_inputs(encoder: Encoder, reranker: Reranker, query: Query) -> tuple[np.ndarray, np.ndarray | None]:
    """The reranker's tokens (1, T, d) of a query's photo and its word probabilities (1, V), from one model call
    (None when the reranker has no word classifier), computed once per query: the hybrid and rerank stages
    both read them."""
    if "photo" not in query.memo:
        grid = query.grid
        if grid is None:
            _, grid = encoder.encode_prepared_grids([encoder.prepare_image(query.source)])
        query.memo["photo"] = reranker.photo_tokens(grid), reranker.photo_words(grid)
    return query.memo["photo"]


def captions_for_photo(reranker: Reranker, states: np.ndarray, mask: np.ndarray, tokens: np.ndarray,
                       words: np.ndarray | None, texts: list[str]) -> np.ndarray:
    """Logits of candidate captions (their token states) for one photo (its tokens (T, d) and word
    probabilities), with the caption-word evidence folded in when the reranker has a word classifier."""
    logits = reranker.score(states, mask, np.repeat(tokens[None], len(texts), 0))
    if words is None or reranker.words is None:
        return logits
    from ..rerank.words import with_words

    evidence = reranker.words.evidence(words, texts)
    return with_words(logits, evidence, reranker.words.share, reranker.weight)


def collection_scorer(store: ItemStore, encoder: Encoder, reranker: Reranker, kind: str,
                      lock: AbstractContextManager) -> Scorer:
    """Logits of a query against stored candidates of ``kind``; None when a candidate photo has no stored
    tokens yet (indexed before the reranker: the next ``index`` adds them) or the query text, or a candidate
    caption of a photo query, went through the multilingual tower (the reranker reads English token states),
    and the query is not reranked. ``lock`` is held around store reads only."""
    def photos_for_text(query: Query, ids: np.ndarray) -> np.ndarray | None:
        if not encoder.reads_natively(str(query.source)):
            return None
        with lock:
            tokens = store.tokens(ids)
        if tokens is None:
            return None
        states, mask = query.states or encoder.token_states([str(query.source)])
        return reranker.score_photos(states, mask, tokens)

    def texts_for_photo(query: Query, ids: np.ndarray) -> np.ndarray | None:
        with lock:
            items = store.get(ids)
        texts = [items[int(i)].text or "" for i in ids]
        if encoder.foreign(texts).any():
            return None
        states, mask = encoder.token_states(texts)
        tokens, words = photo_query_inputs(encoder, reranker, query)
        return captions_for_photo(reranker, states, mask, tokens[0], None if words is None else words[0], texts)

    return photos_for_text if kind == "image" else texts_for_photo


def dataset_scorers(encoder: Encoder, reranker: Reranker, data: CaptionDataset, tokens: np.ndarray,
                    batch: int = 256, words: np.ndarray | None = None) -> dict[str, SetScorer]:
    """Scorers over a dataset held in memory (eval), by the kind they rank: the photos' reranker tokens and word
    probabilities (computed with their vectors), token states of every caption computed once. A caption the
    multilingual tower encoded is not reranked as a query, nor a photo query with such a caption among its
    candidates (None), as in search."""
    states: list[np.ndarray] = []
    for start in range(0, len(data.texts), batch):
        s, m = encoder.token_states(data.texts[start:start + batch])
        states += [row[:n] for row, n in zip(s, m.sum(1), strict=True)]  # right padding: the real tokens lead

    native = [encoder.reads_natively(t) for t in data.texts]

    def photos_for_text(query: int, items: np.ndarray) -> np.ndarray | None:
        if not native[query]:
            return None
        return reranker.score_photos(*pad_states([states[query]]), tokens[items])

    def texts_for_photo(query: int, items: np.ndarray) -> np.ndarray | None:
        if not all(native[i] for i in items):
            return None
        s, m = pad_states([states[i] for i in items])
        return captions_for_photo(reranker, s, m, tokens[query], None if words is None else words[query],
                                  [data.texts[i] for i in items])

    return {"image": photos_for_text, "text": texts_for_photo}
