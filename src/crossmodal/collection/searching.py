"""What every kind of collection searches with: ``Hit`` and ``Hits``, the query checks, and the ``search``,
``search_vector`` and ``understand`` methods built on a collection's ``search_queries`` (one collection:
collection.py; shards answering as one: sharded.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from ..encoders import load_encoder
from ..search.filters import Condition, parse_condition
from ..search.pipeline import Query, Ranked, Ranking
from ..search.query import Term, encode_query
from ..search.understand import Understood, understand
from .manifest import ModelMismatchError
from .moments import hit_place
from .paths import shown
from .store import KINDS
from .sync import content_hash

if TYPE_CHECKING:
    from ..encoders.base import Encoder
    from .manifest import Manifest
    from .store import Item


@dataclass
class Hit:
    """One search result. ``path`` is set for photos and videos, ``text`` for texts, ``t`` for videos."""

    id: int
    score: float
    kind: str
    path: str | None = None
    text: str | None = None
    fields: dict[str, Any] | None = None
    t: float | None = None  # a video's best moment: ``path`` is the video, ``t`` the moment's time in seconds

    def to_dict(self) -> dict[str, Any]:
        """The hit as JSON-ready values; a file name that is not UTF-8 shows its odd bytes as ``\\xNN``."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.path is not None:
            out["path"] = shown(self.path)
        return out


class Hits(list):
    """One query's results, best first; ``missing_shards`` lists the shards of a sharded collection that did
    not answer in time (the answer is then partial: the best of the shards that did)."""

    def __init__(self, hits: Iterable[Hit] = (), missing_shards: Sequence[int] = ()) -> None:
        super().__init__(hits)
        self.missing_shards = tuple(missing_shards)

    @property
    def partial(self) -> bool:
        return bool(self.missing_shards)


def check_search(manifest: Manifest, queries: Sequence[Query], k: int, kind: str) -> None:
    """Refuse a search the collection cannot answer: an unknown kind, k < 1, a vector of another model."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    for q in queries:
        if np.shape(q.vector) != (manifest.dim,):
            raise ModelMismatchError(f"a query vector has shape {np.shape(q.vector)}; this collection stores "
                                     f"{manifest.dim}-d vectors of {manifest.model!r}")


def hits_of(ranked: list[Ranked], get: Callable[[list[int]], dict[int, Item]], lock: AbstractContextManager,
            kind: str) -> list[Hits]:
    """The pipeline's ranked ids as hits, with the stored items ``get`` returns (called holding ``lock``)."""
    with lock:
        items = get(sorted({int(i) for _, ids in ranked for i in ids}))  # np.unique imports numpy.ma
    return [Hits([hit_of(items[int(i)], float(s), kind) for s, i in zip(scores, ids, strict=True) if int(i) in items])
            for scores, ids in ranked]


def hit_of(item: Item, score: float, kind: str) -> Hit:
    """A stored item as a hit: a moment of a video shows as the video at the moment's time (moments.py)."""
    path, t = hit_place(item)
    return Hit(id=item.id, score=score, kind=kind, path=path, text=item.text, fields=item.fields or None, t=t)


class Searchable:
    """Searching by text, photo, vector or weighted terms, for any collection that provides ``encoder``,
    ``store.by_hash``, ``search_queries``, ``matches`` and ``places``."""

    manifest: Manifest
    store: Any
    lock: AbstractContextManager
    _encoder: Encoder | None

    @property
    def encoder(self) -> Encoder:
        """The collection's model, loaded on first use and checked against the manifest."""
        if self._encoder is None:
            encoder = load_encoder(self.manifest.model)
            self.manifest.check(encoder.name, encoder.fingerprint)
            self._encoder = encoder
            self._loaded(encoder)
        return self._encoder

    def _loaded(self, encoder: Encoder) -> None:
        """What else needs the model once it is loaded (nothing, but for the shards of a sharded collection)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.store.count()

    def search_queries(self, queries: Sequence[Query], *, k: int = 10, kind: str = "image", path: str | None = None,
                       where: Sequence[Condition] = (), ranking: Ranking | None = None,
                       timings: Any = None) -> list[Hits]:
        raise NotImplementedError

    def matches(self, kind: str, condition: Condition) -> bool:
        raise NotImplementedError

    def places(self, kind: str) -> dict[str, dict[str, str]]:
        raise NotImplementedError


    def search(
        self,
        text: str | None = None,
        *,
        image: str | Path | None = None,
        terms: Sequence[Term] = (),
        k: int = 10,
        kind: str = "image",
        path: str | None = None,
        where: Sequence[str | Condition] = (),
        exclude_query_image: bool = True,
        ranking: Ranking | None = None,
    ) -> Hits:
        """Top-``k`` items of ``kind`` for a text, a photo, or a weighted mix of ``terms``.

        ``path`` is a glob on stored paths and ``where`` holds conditions such as ``"album=paris"`` or
        ``"size>100000"``; both restrict the candidates before ranking, so the page is full when at least
        ``k`` items match. A query photo that is itself in the collection is left out of the results.
        ``ranking`` sets normalisation, reranking and the score cutoff (search/pipeline.py; defaults as
        everywhere else).
        """
        all_terms = list(terms)
        if text is not None:
            all_terms.insert(0, Term.text(text))
        if image is not None:
            all_terms.insert(0, Term.image(image))
        query = encode_query(self.encoder, all_terms, both_towers=ranking is not None and ranking.both_towers,
                             ranks_texts=kind == "text")
        query.exclude = self._query_image_ids(all_terms) if exclude_query_image and kind == "image" else []
        conditions = [c if isinstance(c, Condition) else parse_condition(c) for c in where]
        return self.search_queries([query], k=k, kind=kind, path=path, where=conditions, ranking=ranking)[0]

    def search_vector(self, vector: np.ndarray, *, k: int = 10, kind: str = "image", path: str | None = None,
                      where: Sequence[Condition] = (), exclude: Iterable[int] = (), modality: str = "mixed",
                      ranking: Ranking | None = None) -> Hits:
        """Top-``k`` items for an already encoded query vector (same model as the collection); ``modality``
        (text, image or mixed) says whether normalisation applies."""
        query = Query(np.asarray(vector, dtype=np.float32), modality, exclude=list(exclude))
        return self.search_queries([query], k=k, kind=kind, path=path, where=where, ranking=ranking)[0]

    def understand(self, text: str, kind: str = "image") -> Understood:
        """The dates and places in a query's words as filters on what the items of ``kind`` hold
        (search/understand.py): ``c.search(u.text, where=u.conditions)`` then searches as the CLI and API do."""
        return understand(text, lambda condition: self.matches(kind, condition), self.places(kind))

    def _query_image_ids(self, terms: Sequence[Term]) -> list[int]:
        """Ids of stored photos with the same content as a query photo (the photo itself, its copies)."""
        out: list[int] = []
        for term in terms:
            if term.is_image and term.weight > 0 and os.path.isfile(term.value):
                digest = content_hash(Path(term.value).read_bytes())
                out += [it.id for it in self.store.by_hash(digest, "image")]
        return out
