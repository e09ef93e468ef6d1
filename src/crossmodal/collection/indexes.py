"""Keeping one vector index per item kind in step with the store.

The planner picks a kind from the collection's size and the manifest's settings; the choice is
recorded in the manifest. Small collections (and ``flat`` fp32) are searched straight from the
memory-mapped snapshot, with no second copy. Otherwise the index lives in ``index/{kind}.faiss``
with the store generation it reflects; on the next search after a change it is updated in place
(new and re-embedded ids added, deleted ids removed) and rebuilt only on a threshold: HNSW with over
20% tombstones, quantizers trained on a quarter of today's size, or a changed plan.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..index import VectorIndex, build_index, load_index
from ..index.planner import IndexPlan, plan_index
from ..search.normalise import augment, index_dim
from .atomic import atomic_write, atomic_write_json
from .manifest import Manifest
from .store import ItemStore

INDEX_DIR = "index"
MAX_STALE = 0.2
REBUILD_GROWTH = 4


class IndexVectors:
    """The snapshot's vectors as indexes store them, ``[vector, -bias, 0...]``, made a slice at a time
    (no second full copy of a large collection)."""

    def __init__(self, vectors: np.ndarray, biases: np.ndarray | None, width: int) -> None:
        self.vectors, self.biases, self.width = vectors, biases, width
        self.shape = (len(vectors), width)

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, rows: Any) -> np.ndarray:
        return augment(self.vectors[rows], 0.0 if self.biases is None else self.biases[rows], self.width)


class SnapshotLookup:
    """Stored vectors by id (as indexes store them), read from the sorted-id snapshot (memory-mapped),
    for exact rescoring."""

    def __init__(self, ids: np.ndarray, vectors: IndexVectors) -> None:
        self.ids, self.vectors = ids, vectors

    def rows(self, ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self.ids, ids)
        if len(ids) and (rows.max(initial=0) >= len(self.ids) or not np.array_equal(self.ids[rows], ids)):
            raise KeyError("some ids are not in the collection snapshot")
        return rows

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        rows = self.rows(ids)
        order = np.argsort(rows)  # read the memory map front to back
        out = np.empty((len(ids), self.vectors.shape[1]), dtype=np.float32)
        out[order] = self.vectors[rows[order]]
        return out


LAYOUT = "vector,-bias"  # what index files store; indexes written before normalisation are rebuilt


class IndexManager:
    """The per-kind indexes of one collection folder."""

    def __init__(self, folder: Path, store: ItemStore, manifest: Manifest) -> None:
        self.folder = folder / INDEX_DIR
        self.store = store
        self.manifest = manifest
        self._cache: dict[str, tuple[int, VectorIndex | None]] = {}

    def plan(self, kind: str, n: int) -> IndexPlan:
        settings = self.manifest.index
        requested = settings.get("kind", "auto")
        return plan_index(n, self.manifest.dim, settings.get("memory"), settings.get("recall", 0.95),
                          None if requested == "auto" else requested)

    def get(self, kind: str) -> VectorIndex | None:
        """The up-to-date index for items of ``kind``, or None when exact search on the snapshot is the plan."""
        generation = self.store.generation
        cached = self._cache.get(kind)
        if cached is not None and cached[0] == generation:
            return cached[1]
        ids, _ = self.store.matrix(kind)
        plan = self.plan(kind, len(ids))
        self._record(kind, plan)
        index = None
        if not (plan.kind == "flat" and plan.params.get("storage") == "fp32") and len(ids):
            index = self._sync(kind, plan, ids, self.vectors(kind, plan.kind), generation)
        self._cache[kind] = (generation, index)
        return index

    def vectors(self, kind: str, index_kind: str) -> IndexVectors:
        """The snapshot of ``kind`` as an index of ``index_kind`` stores it (normalisation bias included)."""
        _, vectors = self.store.matrix(kind)
        return IndexVectors(vectors, self.store.biases(kind), index_dim(self.manifest.dim, index_kind))

    def lookup(self, kind: str, index: VectorIndex) -> SnapshotLookup:
        return SnapshotLookup(self.store.matrix(kind)[0], self.vectors(kind, index.kind))

    def rebuild(self, kind: str) -> VectorIndex | None:
        """Drop the stored index of ``kind`` and build it again from the snapshot."""
        for path in self.folder.glob(f"{kind}.*"):
            path.unlink()
        self._cache.pop(kind, None)
        return self.get(kind)

    def _paths(self, kind: str) -> tuple[Path, Path, Path]:
        return self.folder / f"{kind}.faiss", self.folder / f"{kind}.members.npy", self.folder / f"{kind}.state.json"

    def _sync(self, kind: str, plan: IndexPlan, ids: np.ndarray, vectors: IndexVectors, generation: int
              ) -> VectorIndex:
        index_path, members_path, state_path = self._paths(kind)
        state = json.loads(state_path.read_text()) if state_path.is_file() else None
        if state is not None and self._reusable(state, plan, len(ids)):
            if state["generation"] == generation:
                index = load_index(index_path, mmap=True)
                self._tune(index, plan)
                return index
            index = load_index(index_path, mmap=False)
            members = np.load(members_path)
            removed = np.setdiff1d(members, ids, assume_unique=True)
            written = np.intersect1d(self.store.written_since(kind, state["generation"]), ids)
            added = np.union1d(np.setdiff1d(ids, members, assume_unique=True), written)
            index.remove(removed)
            rows = np.searchsorted(ids, added)
            index.add(added, vectors[rows])
            if getattr(index, "stale_fraction", 0.0) <= MAX_STALE:
                self._tune(index, plan)
                self._save(kind, index, ids, generation, state["built_n"])
                return index
        index = build_index(plan.kind, ids, vectors, **plan.params)
        self._save(kind, index, ids, generation, len(ids))
        return index

    @staticmethod
    def _reusable(state: dict, plan: IndexPlan, n: int) -> bool:
        """Can the stored index be updated, or does the plan (or growth) call for a rebuild?"""
        same = state.get("layout") == LAYOUT and state["kind"] == plan.kind and all(
            state["params"].get(k) == v for k, v in plan.params.items() if k not in ("ef_search", "nprobe"))
        trained = plan.kind == "ivfpq" or plan.params.get("storage") == "int8"
        return same and not (trained and n > REBUILD_GROWTH * max(state["built_n"], 1))

    @staticmethod
    def _tune(index: VectorIndex, plan: IndexPlan) -> None:
        """Search-time knobs follow the plan without a rebuild."""
        for knob in ("ef_search", "nprobe"):
            if knob in plan.params:
                index.params[knob] = plan.params[knob]

    def _save(self, kind: str, index: VectorIndex, ids: np.ndarray, generation: int, built_n: int) -> None:
        index_path, members_path, state_path = self._paths(kind)
        self.folder.mkdir(parents=True, exist_ok=True)
        index.save(index_path)
        atomic_write(members_path, lambda f: np.save(f, ids))
        atomic_write_json(state_path, {"kind": index.kind, "layout": LAYOUT, "params": index.params,
                                       "generation": generation,
                                       "built_n": built_n, "bytes": index.nbytes})

    def _record(self, kind: str, plan: IndexPlan) -> None:
        """Write the planner's choice into the manifest when it changes."""
        if self.manifest.index.get(kind) != plan.to_dict():
            self.manifest.index[kind] = plan.to_dict()
            self.manifest.write(self.store.folder)
