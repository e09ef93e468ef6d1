"""Work ahead of the model: read and decode photos in worker threads while the model encodes.

Threads, not processes: Pillow's decoders, hashing and file reads release the GIL, and a decoded
photo then needs no copy between processes. The window bounds how many photos are held at once,
so memory stays flat however large the folder is.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def decode_workers() -> int:
    """Worker threads for decoding: one per core, at most 4 (decoding is a small share of the work)."""
    return max(1, min(4, os.cpu_count() or 1))


def prefetch(fn: Callable[[T], R], items: Iterable[T], window: int, workers: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` in order, computed by worker threads at most ``window`` items ahead
    (``workers=0``: in the calling thread, one item at a time)."""
    if workers == 0:
        yield from map(fn, items)
        return
    source = iter(items)
    pool = ThreadPoolExecutor(workers or decode_workers(), thread_name_prefix="decode")
    pending: deque[Future[R]] = deque(pool.submit(fn, item) for item in islice(source, max(1, window)))
    try:
        while pending:
            result = pending.popleft().result()
            for item in islice(source, 1):
                pending.append(pool.submit(fn, item))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    source = iter(items)
    while batch := list(islice(source, size)):
        yield batch
