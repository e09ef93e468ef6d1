"""The photos' normalisation biases for queries the multilingual tower encodes (encoders/multilingual.py).

Nearest-neighbour normalisation draws its reference queries from the queries' own distribution; the tower's
vectors of German, French or Czech captions are not distributed as the model's own vectors of English ones.
Against the tower's own bank, on Multi30K dev, its queries find the right photo in the top 10 about 1.5 points
more often than against the model's bank (docs/benchmarks.md), while English queries keep the model's bank.

The biases are derived from the stored photo vectors and the tower's bank, so they live beside the indexes
(``index/tower-biases-{kind}.npz``, with the store generation and bank they reflect): photos written since are
computed, the rest kept, all of them when the bank changes; ``index`` brings them up to date, and a search
computes at most ``SEARCH_COMPUTES`` of them (until ``index`` has run, the tower's queries take the model's bank).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..search.normalise import Bank
from .atomic import atomic_write
from .store import ItemStore

FILE = "index/tower-biases-{kind}.npz"
SEARCH_COMPUTES = 10_000  # photos a search computes biases for at most (about 15 GFLOP, a second or two)


class TowerBiases:
    """Each photo's bias against the tower's bank, in ``store.matrix`` order, up to date with the store."""

    def __init__(self, folder: Path, store: ItemStore, bank: Bank | None) -> None:
        self.folder, self.store, self.bank = Path(folder), store, bank
        self._cache: dict[str, tuple[int, np.ndarray]] = {}

    def get(self, kind: str, most: int | None = None) -> np.ndarray | None:
        """The biases (N,) of the items of ``kind`` in ``store.matrix`` order; None without a bank, or when more
        than ``most`` items would need computing (a search leaves a large backlog to ``index``)."""
        if self.bank is None:
            return None
        generation = self.store.generation
        held = self._cache.get(kind)
        if held is not None and held[0] == generation:
            return held[1]
        biases = self._build(kind, generation, most)
        if biases is not None:
            self._cache[kind] = (generation, biases)
        return biases

    def _build(self, kind: str, generation: int, most: int | None) -> np.ndarray | None:
        ids, vectors = self.store.matrix(kind)
        biases = np.full(len(ids), np.nan, dtype=np.float32)
        old = self._load(kind)
        if old is not None and len(old[1]):
            old_generation, old_ids, old_biases = old
            at = np.minimum(np.searchsorted(old_ids, ids), len(old_ids) - 1)
            kept = (old_ids[at] == ids) & ~np.isin(ids, self.store.written_since(kind, old_generation))
            biases[kept] = old_biases[at[kept]]
        todo = np.flatnonzero(np.isnan(biases))
        if most is not None and len(todo) > most:
            return None
        if len(todo):
            biases[todo] = self.bank.biases(kind, np.asarray(vectors[todo], dtype=np.float32))
        if (old is None or len(todo) or len(old[1]) != len(ids)) and not self.store.read_only:
            self._save(kind, ids, biases, generation)
        return biases

    def _path(self, kind: str) -> Path:
        return self.folder / FILE.format(kind=kind)

    def _load(self, kind: str) -> tuple[int, np.ndarray, np.ndarray] | None:
        try:
            with np.load(self._path(kind)) as f:
                state = json.loads(str(f["state"]))
                if state["bank"] != self.bank.id:
                    return None
                return state["generation"], f["ids"], f["biases"]
        except (OSError, KeyError, ValueError):
            return None

    def _save(self, kind: str, ids: np.ndarray, biases: np.ndarray, generation: int) -> None:
        state = json.dumps({"generation": generation, "bank": self.bank.id})
        self._path(kind).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(kind), lambda f: np.savez(f, ids=ids, biases=biases, state=state))
