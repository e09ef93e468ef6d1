"""Batching concurrent searches: a worker thread encodes the queries that arrived together in one
model call, then runs their searches as one matrix product (per kind and filter).

Each worker runs its steps one after another, and the BLAS pool is limited to one thread: on a small
machine a model call and a BLAS search spinning on the same cores each become several times slower.
With ``workers`` > 1 (one per core) several batches are encoded at once, each on its own core, by a
model whose own thread pool is one thread (ONNX Runtime sessions can be run from several threads).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..collection.collection import Collection, Hit
from ..encoders.base import Encoder
from ..search.filters import Condition
from ..search.pipeline import Query, Ranking
from ..search.query import combine, modality_of


@dataclass
class SearchJob:
    """One request's query (weighted texts, photos and stored vectors) and where to search."""

    texts: list[tuple[float, str]] = field(default_factory=list)
    images: list[tuple[float, Image.Image]] = field(default_factory=list)
    vectors: list[tuple[float, np.ndarray, str]] = field(default_factory=list)  # stored items' (weight, vector, kind)
    k: int = 10
    kind: str = "image"
    path: str | None = None
    where: tuple[Condition, ...] = ()
    ranking: Ranking = field(default_factory=Ranking)
    exclude: list[int] = field(default_factory=list)
    future: Future = field(default_factory=Future)

    def query(self, text_vectors: Iterator[tuple[np.ndarray, Any]], image_vectors: Iterator[tuple[np.ndarray, Any]],
              encoder: Encoder) -> Query:
        """This job's query, taking its terms' vectors (and texts' token states, photos' grids) from the batch's
        encoded texts and photos in order."""
        texts = [(w, *next(text_vectors)) for w, _ in self.texts]
        photos = [(w, *next(image_vectors)) for w, _ in self.images]
        parts = [(w, v) for w, v, _ in texts] + [(w, v) for w, v, _ in photos]
        terms = [(w, False) for w, _ in self.texts] + [(w, True) for w, _ in self.images]
        terms += [(w, kind == "image") for w, _, kind in self.vectors]
        values = [t for _, t in self.texts] + [im for _, im in self.images] + [None] * len(self.vectors)
        vector = combine(parts + [(w, v) for w, v, _ in self.vectors], encoder.dim)
        states = texts[0][2] if len(texts) == 1 else None
        grid = photos[0][2] if len(photos) == 1 else None
        tower = bool(self.texts) and not (self.images or self.vectors) and not any(
            encoder.reads_natively(t) for _, t in self.texts)
        return Query(vector, *modality_of(terms, values), exclude=self.exclude, states=states, grid=grid, tower=tower)


class SearchBatcher:
    """Collects jobs for up to ``max_wait`` seconds (or ``max_batch`` jobs) and serves them together."""

    def __init__(self, collection: Collection, max_batch: int = 32,
                 max_wait: float = 0.002, on_batch: Callable[[int], Any] | None = None, workers: int = 1) -> None:
        self.collection = collection
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch  # called with the size of each batch (metrics)
        self._queue: queue.Queue[SearchJob | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._run, name=f"search-batcher-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    async def search(self, job: SearchJob) -> list[Hit]:
        self._queue.put(job)
        return await asyncio.wrap_future(job.future)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=self.max_wait)
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._serve_isolated(batch)

    def _serve_isolated(self, batch: list[SearchJob]) -> None:
        """Serve a batch; if it fails, serve its unanswered jobs one by one, so a bad request (one whose
        search raises) gets its own error and never fails the others it was batched with."""
        try:
            self._serve(batch)
            return
        except Exception as e:
            if len(batch) == 1:
                _settle(batch[0], error=e)
                return
        for job in batch:
            if not job.future.done():
                try:
                    self._serve([job])
                except Exception as e:  # never the worker
                    _settle(job, error=e)

    def _encode_texts(self, encoder: Any, texts: list[str], batch: list[SearchJob]) -> list[tuple[np.ndarray, Any]]:
        """(vector, token states or None) per text of ``batch``'s jobs, in order; the states come from the same
        model call when a reranker will read them (text queries ranking photos)."""
        if not texts:
            return []
        reranks = self.collection.reranker("image") is not None and any(
            job.ranking.rerank and job.kind in ("image", "video") for job in batch)
        if reranks:
            vectors, states = encoder.encode_texts_with_states(texts)
        else:
            vectors, states = encoder.encode_texts(texts), [None] * len(texts)
        both = np.array([job.ranking.both_towers for job in batch for _ in job.texts], dtype=bool)
        if both.any():  # the texts of requests that ask for both towers (Ranking.both_towers)
            vectors[both] = encoder.blend_captions([t for t, b in zip(texts, both, strict=True) if b], vectors[both])
        return list(zip(vectors, states, strict=True))

    @staticmethod
    def _encode_images(encoder: Encoder, images: list[Image.Image], batch: list[SearchJob]
                       ) -> list[tuple[np.ndarray, Any]]:
        """The batch's photos' (vector, spatial features for the reranker, or None), from one model call; the photos
        of queries that rank captions read with their mirror images too (``Encoder.caption_query_photos``)."""
        if not images:
            return []
        prepared = [encoder.prepare_image(im) for im in images]
        if encoder.rerank_inputs:
            vectors, grids = encoder.encode_prepared_grids(prepared)
        else:
            vectors, grids = encoder.encode_prepared(prepared), [None] * len(images)
        ranking_captions = np.flatnonzero([job.kind == "text" for job in batch for _ in job.images])
        if len(ranking_captions):
            vectors[ranking_captions] = encoder.caption_query_photos(vectors[ranking_captions],
                                                                     [prepared[i] for i in ranking_captions])
        return [(v, None if g is None else g[None]) for v, g in zip(vectors, grids, strict=True)]

    def _serve(self, batch: list[SearchJob]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        encoder = self.collection.encoder
        texts = [t for job in batch for _, t in job.texts]
        images = [im for job in batch for _, im in job.images]
        text_vecs = iter(self._encode_texts(encoder, texts, batch))
        image_vecs = iter(self._encode_images(encoder, images, batch))
        groups: dict[tuple, list[tuple[SearchJob, Query]]] = defaultdict(list)
        for job in batch:
            try:
                query = job.query(text_vecs, image_vecs, encoder)
            except ValueError as e:
                _settle(job, error=e)
                continue
            groups[(job.kind, job.path, job.where, job.k, job.ranking)].append((job, query))
        for (kind, path, where, k, ranking), members in groups.items():
            results = self.collection.search_queries([q for _, q in members], k=k, kind=kind, path=path,
                                                     where=where, ranking=ranking)
            for (job, _), hits in zip(members, results, strict=True):
                _settle(job, hits)


def _settle(job: SearchJob, hits: list[Hit] | None = None, error: Exception | None = None) -> None:
    """Answer a job, unless it is answered already or was cancelled (its client went away)."""
    try:
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(hits)
    except InvalidStateError:
        pass
