"""Batching query encoding across concurrent requests: one worker thread encodes whatever queries
arrived together in one model call, so 16 clients cost about one batch, not 16 calls."""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np
from PIL import Image

from ..encoders.base import Encoder


class EncodeBatcher:
    """Collects texts and photos for up to ``max_wait`` seconds (or ``max_batch`` items) per batch."""

    def __init__(self, encoder: Encoder, max_batch: int = 32, max_wait: float = 0.002,
                 on_batch: Any = None) -> None:
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch  # called with the size of each batch (metrics)
        self._queue: queue.Queue[tuple[str, Any, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="encode-batcher", daemon=True)
        self._thread.start()

    async def text(self, text: str) -> np.ndarray:
        return await self._submit("text", text)

    async def image(self, image: Image.Image) -> np.ndarray:
        return await self._submit("image", image)

    async def _submit(self, kind: str, value: Any) -> np.ndarray:
        future: Future = Future()
        self._queue.put((kind, value, future))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

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
            self._encode(batch)

    def _encode(self, batch: list[tuple[str, Any, Future]]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for kind, encode in (("text", self.encoder.encode_texts), ("image", self.encoder.encode_images)):
            group = [(value, future) for k, value, future in batch if k == kind]
            if not group:
                continue
            try:
                vectors = encode([value for value, _ in group])
            except Exception as e:  # a bad batch fails its own requests, never the worker
                for _, future in group:
                    future.set_exception(e)
                continue
            for (_, future), vector in zip(group, vectors, strict=True):
                future.set_result(vector)
