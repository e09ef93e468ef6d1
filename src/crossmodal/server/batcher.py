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
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..collection.collection import Collection, Hit
from ..search.filters import Condition
from ..search.query import combine


@dataclass
class SearchJob:
    """One request's query (weighted texts, photos and stored vectors) and where to search."""

    texts: list[tuple[float, str]] = field(default_factory=list)
    images: list[tuple[float, Image.Image]] = field(default_factory=list)
    vectors: list[tuple[float, np.ndarray]] = field(default_factory=list)
    k: int = 10
    kind: str = "image"
    path: str | None = None
    where: tuple[Condition, ...] = ()
    exclude: list[int] = field(default_factory=list)
    future: Future = field(default_factory=Future)


class SearchBatcher:
    """Collects jobs for up to ``max_wait`` seconds (or ``max_batch`` jobs) and serves them together."""

    def __init__(self, collection: Collection, lock: threading.RLock, max_batch: int = 32,
                 max_wait: float = 0.002, on_batch: Callable[[int], Any] | None = None, workers: int = 1) -> None:
        self.collection = collection
        self.lock = lock
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
            try:
                self._serve(batch)
            except Exception as e:  # a failing batch fails its own requests, never the worker
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)

    def _serve(self, batch: list[SearchJob]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        encoder = self.collection.encoder
        texts = [t for job in batch for _, t in job.texts]
        images = [im for job in batch for _, im in job.images]
        text_vecs = iter(encoder.encode_texts(texts)) if texts else iter(())
        image_vecs = iter(encoder.encode_images(images)) if images else iter(())
        groups: dict[tuple, list[tuple[SearchJob, np.ndarray]]] = defaultdict(list)
        for job in batch:
            parts = [(w, next(text_vecs)) for w, _ in job.texts] + [(w, next(image_vecs)) for w, _ in job.images]
            try:
                vector = combine(parts + job.vectors, encoder.dim)
            except ValueError as e:
                job.future.set_exception(e)
                continue
            groups[(job.kind, job.path, job.where, job.k)].append((job, vector))
        for (kind, path, where, k), members in groups.items():
            with self.lock:
                results = self.collection.search_vectors(
                    np.stack([v for _, v in members]), k=k, kind=kind, path=path, where=where,
                    exclude=[job.exclude for job, _ in members])
            for (job, _), hits in zip(members, results, strict=True):
                job.future.set_result(hits)
