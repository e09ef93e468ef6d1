"""Keeping one vector index per item kind in step with the store.

The planner picks a kind from the collection's size and the manifest's settings; the choice is
recorded in the manifest. Small collections (and ``flat`` fp32) are searched straight from the
memory-mapped vector files (vector_file.py), with no second copy. Otherwise the index lives in a generation folder under
``index/`` (swapped in whole by ``index/{kind}.state.json``, which records the store generation it
reflects; see generations.py), checked against its member list when loaded and rebuilt from the store
when damaged; on the next search after a change it is updated in place
(new and re-embedded ids added, deleted ids removed) and rebuilt only on a threshold: HNSW with over
20% tombstones, quantizers trained on a quarter of today's size, or a changed plan.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ..index.planner import IndexPlan, plan_index
from ..search.exact import topk
from ..search.normalise import SHARE, augment, index_dim
from . import shared_graph
from .generations import FileSet
from .manifest import Manifest
from .store import KINDS, ItemStore
from .vector_file import touch

if TYPE_CHECKING:  # FAISS is imported only where an index is loaded or built: exact search needs none
    from ..index import VectorIndex, VectorLookup

INDEX_DIR = "index"
FRESH_LIMIT = 50_000
READ_WHOLE_AFTER = 1.0  # seconds after a mapped graph index is opened
MAX_STALE = 0.2
REBUILD_GROWTH = 4


class IndexVectors:
    """The stored rows ``[vector, -bias]`` as indexes store them, ``[vector, -bias, 0...]`` (the bias 0 until
    every item has one from the current bank), made a slice at a time (no second full copy)."""

    def __init__(self, rows: Any, biases: np.ndarray | None, width: int) -> None:
        self.rows, self.biases, self.width = rows, biases, width
        self.shape = (len(rows), width)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, sel: Any) -> np.ndarray:
        rows = np.atleast_2d(self.rows[sel])
        dim = rows.shape[1] - 1
        return augment(rows[:, :dim], 0.0 if self.biases is None else -rows[:, dim], self.width)


class _Rows:
    """Chosen rows of the index vectors, sliced a batch at a time."""

    def __init__(self, vectors: IndexVectors, rows: np.ndarray) -> None:
        self.vectors, self.rows = vectors, rows

    def __getitem__(self, part: slice) -> np.ndarray:
        return self.vectors[self.rows[part]]


class StoredLookup:
    """Stored vectors by id, as indexes store them, for exact rescoring: a few rows at a time, found
    through SQLite and read from the memory-mapped vector file."""

    def __init__(self, store: ItemStore, kind: str, width: int) -> None:
        self.store, self.width = store, width
        self.normalised = store.biases_current(kind)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        vectors, biases = self.store.vectors_of(ids, missing=KeyError)
        return augment(vectors, biases if self.normalised else 0.0, self.width)


class CatchingUp:
    """The last saved index answering for the store as it is now: items deleted or re-embedded since are
    masked in it, and items written since are scanned exactly beside it (searches never wait for an
    index update; ``index`` brings the saved index up to date)."""

    def __init__(self, index: VectorIndex, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index, self.ids, self.vectors = index, ids, vectors
        self.kind, self.dim, self.params = index.kind, index.dim, index.params

    def query(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
              lookup: VectorLookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The index's answer merged with the exact answer over the newer items (each id once)."""
        scores, ids = self.index.query(queries, k, allowed, lookup)
        mask = None if allowed is None else np.isin(self.ids, allowed)
        fresh_scores, rows = topk(self.vectors, queries, k, mask)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for q in range(len(queries)):
            all_ids = np.concatenate([ids[q], self.ids[rows[q]]])
            all_scores = np.concatenate([scores[q], fresh_scores[q]])
            keep = all_ids >= 0
            all_ids, all_scores = all_ids[keep], all_scores[keep]
            order = np.lexsort((all_ids, -all_scores))
            _, first = np.unique(all_ids[order], return_index=True)
            order = order[np.sort(first)][:k]
            out_scores[q, : len(order)], out_ids[q, : len(order)] = all_scores[order], all_ids[order]
        return out_scores, out_ids


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

    def get(self, kind: str, rebuild: bool = False, progress: bool = False, lag: bool = False
            ) -> VectorIndex | CatchingUp | None:
        """The index for items of ``kind``, or None when exact search on the vector file is the plan;
        ``progress`` shows a bar while building or updating it (``index`` runs). With ``lag`` (searches),
        a saved index behind the store is not updated in the foreground: it answers as ``CatchingUp``, with
        what was written since scanned exactly, unless over FRESH_LIMIT items changed."""
        generation = self.store.generation
        cached = self._cache.get(kind)
        if cached is not None and cached[0] == generation and not rebuild and (
                lag or not isinstance(cached[1], CatchingUp)):
            return cached[1]
        n = self.store.count(kind)
        plan = self.plan(kind, n)
        self._record(kind, plan)
        index = None
        if not (plan.kind == "flat" and plan.params.get("storage") == "fp32") and n:
            index = self._sync(kind, plan, n, generation, rebuild, progress, lag)
        elif not self.read_only:  # searched exactly: no stored index, nothing to catch up on
            FileSet(self.folder, kind).drop()
            self.store.forget_deleted(kind, generation)
            self._drop_unused_files()
        self._cache[kind] = (generation, index)
        if getattr(index.index if isinstance(index, CatchingUp) else index, "mapped", None):
            self._read_in_background(kind, generation, index)
        return index

    def _read_in_background(self, kind: str, generation: int, held: VectorIndex | CatchingUp) -> None:
        """Read a memory-mapped graph index whole in a background thread and put it in the mapped one's
        place: the mapping makes a fresh process's first search fast, but a search through it costs page
        faults (at 200k x 512, p50 0.65 ms and p99 23 ms mapped against 0.35 and 0.58 ms read whole). A graph
        over a vector file also has the file's pages faulted in (at 1M, the first 200 searches of a process
        took p50 3.6 ms, the same searches again 1.2 ms)."""
        from ..index import load_index

        mapped = held.index if isinstance(held, CatchingUp) else held

        def read() -> None:
            try:
                whole = load_index(mapped.mapped, mmap=False)
            except (OSError, ValueError, RuntimeError):  # e.g. a newer save removed the folder: keep the mapping
                return
            whole.params.update(mapped.params)
            whole.alive = mapped.alive  # tombstones a lagging search applied
            if getattr(mapped, "shared", None) is not None:
                whole.share_rows(mapped.shared)
                touch(mapped.shared)
            if isinstance(held, CatchingUp):
                held.index = whole
            elif self._cache.get(kind) == (generation, held):
                self._cache[kind] = (generation, whole)

        reader = threading.Timer(READ_WHOLE_AFTER, read)  # a one-shot CLI search is done by then
        reader.daemon = True
        reader.start()

    def vectors(self, kind: str, index_kind: str) -> IndexVectors:
        """The stored vectors of ``kind`` as an index of ``index_kind`` stores them (normalisation bias included)."""
        _, rows = self.store.rows(kind)
        return IndexVectors(rows, self.store.biases(kind), index_dim(self.manifest.dim, index_kind))

    def lookup(self, kind: str, index: VectorIndex | CatchingUp) -> StoredLookup:
        """Stored vectors by id for exact rescoring, read only if a search needs them."""
        return StoredLookup(self.store, kind, index_dim(self.manifest.dim, index.kind))

    def rebuild(self, kind: str) -> VectorIndex | None:
        """Build the index of ``kind`` again from the store (the stored one stays in use until then)."""
        self._cache.pop(kind, None)
        return self.get(kind, rebuild=True)

    def _load(self, files: FileSet, generation: int, lag: bool = False) -> tuple[VectorIndex, np.ndarray, dict] | None:
        """The stored index, its member ids and state, checked against each other; None when there is
        none, or when it is damaged (then it is rebuilt from the store, which holds every vector). It is
        memory-mapped when nothing will be added to it: it is current, or a graph a search lags behind with."""
        current = files.current()
        if current is None:
            return None
        folder, state = current
        try:
            mmap = state["generation"] == generation or (lag and state["kind"] == "hnsw")
            from ..index import load_index

            index = load_index(folder / "index.faiss", mmap=mmap)
            if state.get("rows_file"):  # a graph over a vector file (shared_graph.py)
                index.share_rows(self.store.files.rows(state["rows_file"], len(index.labels)))
            if mmap and index.kind == "hnsw":
                index.mapped = folder / "index.faiss"  # read whole later, in the background (see get)
            members = np.load(folder / "members.npy")
            if index.ntotal != len(members):
                raise ValueError(f"{index.ntotal} vectors for {len(members)} items")
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # FAISS raises RuntimeError
            if files.current() != current:  # another process swapped in a newer set while we read
                return self._load(files, generation, lag)
            tqdm.write(f"the {files.name} index in {folder} is damaged ({e}); rebuilding it from the store",
                       file=sys.stderr)
            return None
        if not self.read_only:
            files.clean()  # what a crashed save left
        return index, members, state

    def _sync(self, kind: str, plan: IndexPlan, n: int, generation: int, rebuild: bool = False,
              progress: bool = False, lag: bool = False) -> VectorIndex | CatchingUp:
        from ..index import add_in_batches, build_index

        files = FileSet(self.folder, kind)
        loaded = None if rebuild else self._load(files, generation, lag)
        if loaded is not None and self._reusable(loaded[2], plan, n):
            index, members, state = loaded
            self._tune(index, plan, state.get("calibrated"))
            if state["generation"] == generation:
                return index
            rows_file, count = self.store.vector_file(kind)  # rows appended after this are next time's
            written = self.store.written_since(kind, state["generation"])  # new, re-embedded or back
            deleted = self.store.deleted_since(kind, state["generation"])
            if deleted is None:  # deletes not logged that far back: compare every id
                ids = self.store.ids_where("kind = ? ORDER BY id", (kind,))
                deleted = np.setdiff1d(members, ids, assume_unique=True)
            removed = np.intersect1d(deleted, members)
            added = np.unique(written)
            index.remove(np.union1d(removed, added))  # a re-embedded item's old vector goes too
            if lag and len(added) <= FRESH_LIMIT:
                width = index_dim(self.manifest.dim, index.kind)
                vectors, biases = self.store.vectors_of(added)
                normalised = self.store.biases_current(kind)
                return CatchingUp(index, added, augment(vectors, biases if normalised else 0.0, width))
            if lag:  # too much changed: update a copy read into memory (a mapped graph is read-only)
                return self._sync(kind, plan, n, generation, rebuild, progress)
            ids = self.store.matrix(kind)[0]
            if state.get("rows_file") is None:
                vectors = self.vectors(kind, plan.kind)
                rows = np.searchsorted(ids, added)
                add_in_batches(index, added, _Rows(vectors, rows), progress, f"updating the {kind} index")
            elif state["rows_file"] == rows_file:
                shared_graph.extend(self.store, kind, index, added, count, progress)
            if state.get("rows_file") in (None, rows_file) and getattr(index, "stale_fraction", 0.0) <= MAX_STALE:
                self._save(files, index, ids, generation, state["built_n"], state.get("calibrated"),
                           state.get("rows_file"))
                return index
        rows_file, count = None, 0
        if shared_graph.shareable(plan) and not self.read_only and self.store.compact(kind, unused=0.0):
            generation = self.store.generation  # the same items, their rows renumbered (read before the ids)
        if shared_graph.shareable(plan) and not self.read_only:  # the graph's nodes are the file's rows
            rows_file, count = self.store.vector_file(kind)
        ids, _ = self.store.matrix(kind)
        vectors = self.vectors(kind, plan.kind)
        if rows_file is not None and count == len(ids):
            index = shared_graph.build(self.store, rows_file, ids, plan, progress)
        else:
            rows_file = None
            index = build_index(plan.kind, ids, vectors, progress=progress, **plan.params)
        calibrated = self._calibrate(index, ids, vectors)
        self._save(files, index, ids, generation, len(ids), calibrated, rows_file)
        return index

    def _calibrate(self, index: VectorIndex, ids: np.ndarray, vectors: IndexVectors) -> dict | None:
        """For a graph index: the ef_search that reaches the recall target on this collection's own vectors."""
        if index.kind != "hnsw":
            return None
        recall = self.manifest.index.get("recall", 0.95)
        from ..index.calibrate import calibrate_ef

        share = self.store.bank.share if self.store.bank is not None else SHARE  # what its queries will carry
        ef, measured = calibrate_ef(index, ids, vectors, recall, self.manifest.dim,
                                    share if vectors.biases is not None else 0.0)
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
              calibrated: dict | None = None, rows_file: str | None = None) -> None:
        """Store the index and its members as one new generation (nothing, on a read-only collection);
        ``rows_file``: the vector file a graph searches in place."""
        if self.read_only:
            return
        folder = files.new_folder()
        index.save(folder / "index.faiss")
        np.save(folder / "members.npy", ids)
        files.commit(folder, {"kind": index.kind, "layout": LAYOUT, "params": index.params,
                              "generation": generation, "built_n": built_n, "bytes": index.nbytes,
                              "calibrated": calibrated, "rows_file": rows_file})
        self.store.forget_deleted(files.name, generation)  # only once the saved index reflects them
        self._drop_unused_files()

    def _drop_unused_files(self) -> None:
        """Remove vector files that neither the store nor a saved index uses (replaced by compacted ones)."""
        keep = {self.store.vector_file(kind)[0] for kind in KINDS}
        for kind in KINDS:
            current = FileSet(self.folder, kind).current()
            if current is not None and current[1].get("rows_file"):
                keep.add(current[1]["rows_file"])
        self.store.files.remove_others(keep)

    def _record(self, kind: str, plan: IndexPlan) -> None:
        """Write the planner's choice into the manifest when it changes."""
        if self.manifest.index.get(kind) != plan.to_dict():
            self.manifest.index[kind] = plan.to_dict()
            if not self.read_only:
                self.manifest.write(self.store.folder)
