"""The photos' biases for queries the multilingual tower encodes: each the mean of its top-k inner products with
the tower's bank, kept beside the indexes and brought up to date with the store (new photos computed, the rest
kept), all of them again when the bank changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ColorEncoder, make_photo
from crossmodal import Collection
from crossmodal.collection.tower_biases import FILE, TowerBiases
from crossmodal.encoders.base import normalize
from crossmodal.search.normalise import Bank


def bank(seed: int) -> Bank:
    texts = normalize(np.random.default_rng(seed).normal(size=(40, 16)).astype(np.float32))
    return Bank(texts, np.zeros((0, 16), np.float32), "tower", top_k=5)


def by_hand(c: Collection, reference: Bank) -> np.ndarray:
    vectors = np.asarray(c.store.matrix("image")[1], dtype=np.float32)
    return np.sort(vectors @ reference.vectors("texts").T, axis=1)[:, -5:].mean(axis=1)


def test_tower_biases_are_computed_once_per_photo_and_again_for_a_new_bank(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    c = Collection.open(tmp_path / "col", model=ColorEncoder())
    for i in range(6):
        make_photo(tmp_path / "p" / f"{i}.png", (40 * i, 200 - 30 * i, 90), noise=10)
    c.index_folder(tmp_path / "p", progress=False)
    first = bank(0)
    computed: list[int] = []
    biases_of = Bank.biases
    monkeypatch.setattr(Bank, "biases", lambda self, kind, v, **kw: computed.append(len(v)) or biases_of(self, kind, v))
    assert np.allclose(TowerBiases(c.folder, c.store, first).get("image"), by_hand(c, first), atol=1e-6)
    assert computed == [6] and (c.folder / FILE.format(kind="image")).is_file()
    for i in (6, 7):
        make_photo(tmp_path / "p" / f"{i}.png", (250, 20 * i, 20), noise=10)
    c.index_folder(tmp_path / "p", progress=False)
    reopened = TowerBiases(c.folder, c.store, first)  # another process: reads what the file holds
    assert np.allclose(reopened.get("image"), by_hand(c, first), atol=1e-6) and computed == [6, 2]
    second = bank(1)
    assert TowerBiases(c.folder, c.store, second).get("image", most=7) is None  # a search leaves 8 to `index`
    assert np.allclose(TowerBiases(c.folder, c.store, second).get("image", most=8), by_hand(c, second), atol=1e-6)
    assert computed == [6, 2, 8]
    assert TowerBiases(c.folder, c.store, None).get("image") is None
