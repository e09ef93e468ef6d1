"""Keeping one vector index per item kind in step with the store.

The planner picks a kind from the collection's size and the manifest's settings; the choice is
recorded in the manifest. Small collections (and ``flat`` fp32) are searched straight from the
memory-mapped snapshot, with no second copy. Otherwise the index lives in a generation folder under
``index/`` (swapped in whole by ``index/{kind}.state.json``, which records the store generation it
reflects; see generations.py), checked against its member list when loaded and rebuilt from the store
when damaged; on the next search after a change it is updated in place
(new and re-embedded ids added, deleted ids removed) and rebuilt only on a threshold: HNSW with over
20% tombstones, quantizers trained on a quarter of today's size, or a changed plan.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..index import VectorIndex, add_in_batches, build_index, load_index
from ..index.calibrate import calibrate_ef
from ..index.planner import IndexPlan, plan_index
from ..search.normalise import SHARE, augment, index_dim
from .generations import FileSet
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


class _Rows:
    """Chosen rows of the index vectors, sliced a batch at a time."""

    def __init__(self, vectors: IndexVectors, rows: np.ndarray) -> None:
        self.vectors, self.rows = vectors, rows

    def __getitem__(self, part: slice) -> np.ndarray:
        return self.vectors[self.rows[part]]


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
        self.read_only = store.read_only  # indexes are then built in memory and not saved

    def plan(self, kind: str, n: int) -> IndexPlan:
        settings = self.manifest.index
        requested = settings.get("kind", "auto")
        return plan_index(n, self.manifest.dim, settings.get("memory"), settings.get("recall", 0.95),
                          None if requested == "auto" else requested)

    def get(self, kind: str, rebuild: bool = False, progress: bool = False) -> VectorIndex | None:
        """The up-to-date index for items of ``kind``, or None when exact search on the snapshot is the plan;
        ``progress`` shows a bar while building or updating it (``index`` runs)."""
        generation = self.store.generation
        cached = self._cache.get(kind)
        if cached is not None and cached[0] == generation and not rebuild:
            return cached[1]
        ids, _ = self.store.matrix(kind)
        plan = self.plan(kind, len(ids))
        self._record(kind, plan)
        index = None
        if not (plan.kind == "flat" and plan.params.get("storage") == "fp32") and len(ids):
            index = self._sync(kind, plan, ids, self.vectors(kind, plan.kind), generation, rebuild, progress)
        elif not self.read_only:
            FileSet(self.folder, kind).drop()
        self._cache[kind] = (generation, index)
        return index

    def vectors(self, kind: str, index_kind: str) -> IndexVectors:
        """The snapshot of ``kind`` as an index of ``index_kind`` stores it (normalisation bias included)."""
        _, vectors = self.store.matrix(kind)
        return IndexVectors(vectors, self.store.biases(kind), index_dim(self.manifest.dim, index_kind))

    def lookup(self, kind: str, index: VectorIndex) -> SnapshotLookup:
        return SnapshotLookup(self.store.matrix(kind)[0], self.vectors(kind, index.kind))

    def rebuild(self, kind: str) -> VectorIndex | None:
        """Build the index of ``kind`` again from the snapshot (the stored one stays in use until then)."""
        self._cache.pop(kind, None)
        return self.get(kind, rebuild=True)

    def _load(self, files: FileSet, generation: int) -> tuple[VectorIndex, np.ndarray, dict] | None:
        """The stored index, its member ids and state, checked against each other; None when there is
        none, or when it is damaged (then it is rebuilt from the store, which holds every vector)."""
        current = files.current()
        if current is None:
            return None
        folder, state = current
        try:
            index = load_index(folder / "index.faiss", mmap=state["generation"] == generation)
            members = np.load(folder / "members.npy")
            if index.ntotal != len(members):
                raise ValueError(f"{index.ntotal} vectors for {len(members)} items")
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # FAISS raises RuntimeError
            if files.current() != current:  # another process swapped in a newer set while we read
                return self._load(files, generation)
            tqdm.write(f"the {files.name} index in {folder} is damaged ({e}); rebuilding it from the store",
                       file=sys.stderr)
            return None
        if not self.read_only:
            files.clean()  # what a crashed save left
        return index, members, state

    def _sync(self, kind: str, plan: IndexPlan, ids: np.ndarray, vectors: IndexVectors, generation: int,
              rebuild: bool = False, progress: bool = False) -> VectorIndex:
        files = FileSet(self.folder, kind)
        loaded = None if rebuild else self._load(files, generation)
        if loaded is not None and self._reusable(loaded[2], plan, len(ids)):
            index, members, state = loaded
            if state["generation"] == generation:
                self._tune(index, plan, state.get("calibrated"))
                return index
            removed = np.setdiff1d(members, ids, assume_unique=True)
            written = np.intersect1d(self.store.written_since(kind, state["generation"]), ids)
            added = np.union1d(np.setdiff1d(ids, members, assume_unique=True), written)
            index.remove(removed)
            rows = np.searchsorted(ids, added)
            add_in_batches(index, added, _Rows(vectors, rows), progress, f"updating the {kind} index")
            if getattr(index, "stale_fraction", 0.0) <= MAX_STALE:
                self._tune(index, plan, state.get("calibrated"))
                self._save(files, index, ids, generation, state["built_n"], state.get("calibrated"))
                return index
        index = build_index(plan.kind, ids, vectors, progress=progress, **plan.params)
        calibrated = self._calibrate(index, ids, vectors)
        self._save(files, index, ids, generation, len(ids), calibrated)
        return index

    def _calibrate(self, index: VectorIndex, ids: np.ndarray, vectors: IndexVectors) -> dict | None:
        """For a graph index: the ef_search that reaches the recall target on this collection's own vectors."""
        if index.kind != "hnsw":
            return None
        recall = self.manifest.index.get("recall", 0.95)
        ef, measured = calibrate_ef(index, ids, vectors, recall, self.manifest.dim,
                                    SHARE if vectors.biases is not None else 0.0)
        return {"recall": recall, "ef_search": ef, "measured": round(measured, 4)}

    @staticmethod
    def _reusable(state: dict, plan: IndexPlan, n: int) -> bool:
        """Can the stored index be updated, or does the plan (or growth) call for a rebuild?"""
        same = state.get("layout") == LAYOUT and state["kind"] == plan.kind and all(
            state["params"].get(k) == v for k, v in plan.params.items() if k not in ("ef_search", "nprobe"))
        trained = plan.kind == "ivfpq" or plan.params.get("storage") == "int8"
        return same and not (trained and n > REBUILD_GROWTH * max(state["built_n"], 1))

    def _tune(self, index: VectorIndex, plan: IndexPlan, calibrated: dict | None = None) -> None:
        """Search-time knobs follow the plan without a rebuild; ef_search the value calibrated on this
        collection for the plan's recall target, when there is one."""
        for knob in ("ef_search", "nprobe"):
            if knob in plan.params:
                index.params[knob] = plan.params[knob]
        if calibrated and calibrated["recall"] == self.manifest.index.get("recall", 0.95):
            index.params["ef_search"] = calibrated["ef_search"]

    def _save(self, files: FileSet, index: VectorIndex, ids: np.ndarray, generation: int, built_n: int,
              calibrated: dict | None = None) -> None:
        """Store the index and its members as one new generation (nothing, on a read-only collection)."""
        if self.read_only:
            return
        folder = files.new_folder()
        index.save(folder / "index.faiss")
        np.save(folder / "members.npy", ids)
        files.commit(folder, {"kind": index.kind, "layout": LAYOUT, "params": index.params,
                              "generation": generation, "built_n": built_n, "bytes": index.nbytes,
                              "calibrated": calibrated})

    def _record(self, kind: str, plan: IndexPlan) -> None:
        """Write the planner's choice into the manifest when it changes."""
        if self.manifest.index.get(kind) != plan.to_dict():
            self.manifest.index[kind] = plan.to_dict()
            if not self.read_only:
                self.manifest.write(self.store.folder)
