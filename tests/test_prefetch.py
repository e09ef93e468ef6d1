"""The decode-ahead helper: results in order, bounded look-ahead, errors surface in the caller."""

from __future__ import annotations

import threading

import pytest

from crossmodal.sources.prefetch import batches, prefetch


def test_results_come_in_order_with_bounded_look_ahead() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    results = prefetch(work, range(100), window=8, workers=3)
    assert next(results) == 0
    assert len(started) <= 9  # the window, plus the one submitted when the first result was taken
    assert list(results) == [i * i for i in range(1, 100)]
    assert list(prefetch(work, range(5), window=2, workers=0)) == [0, 1, 4, 9, 16]


def test_a_failing_item_raises_in_the_caller() -> None:
    def work(i: int) -> int:
        if i == 3:
            raise ValueError("bad item")
        return i

    with pytest.raises(ValueError, match="bad item"):
        list(prefetch(work, range(10), window=4, workers=2))


def test_batches() -> None:
    assert list(batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches([], 3)) == []
