"""HNSW graph search (FAISS): milliseconds per query at high recall, for collections that fit in memory.

FAISS cannot delete from an HNSW graph, so deleted items become tombstones that searches skip, and
the owner rebuilds the graph once tombstones pass a share of the index (see ``stale_fraction``).
A float32 graph can search rows it does not hold (``share_rows``: a collection's memory-mapped vector
file, row i being node i); it then saves the graph alone, and the vectors are stored once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .base import VectorIndex, VectorLookup, as_ids, as_vectors, exact_rescore
from .faiss_progress import hnsw_progress
from .flat import BYTES_PER_DIM, STORAGE


class HNSWIndex(VectorIndex):
    """``m`` links per node, ``ef_construction`` build effort, ``ef_search`` query effort (recall
    knob); ``storage`` int8/fp16 shrinks the stored vectors, int8 rescoring its candidates exactly."""

    kind = "hnsw"

    def __init__(self, dim: int, m: int = 32, ef_construction: int = 80, ef_search: int = 64,
                 storage: str = "fp32", index: Any = None) -> None:
        if index is None:
            index = (faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT) if storage == "fp32"
                     else faiss.IndexHNSWSQ(dim, STORAGE[storage], m, faiss.METRIC_INNER_PRODUCT))
            index.hnsw.efConstruction = ef_construction
        super().__init__(dim, index, m=m, ef_construction=ef_construction, ef_search=ef_search, storage=storage)
        self.labels = np.zeros(0, dtype=np.int64)  # internal node -> item id
        self.alive = np.zeros(0, dtype=bool)
        self.shared: np.ndarray | None = None  # rows searched in place of stored vectors (node i = row i)
        self._held: list[Any] = []  # what FAISS views into must outlive it (storage, mapped arrays)

    @property
    def rescores(self) -> bool:  # type: ignore[override]
        return self.params["storage"] == "int8"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        self.remove(ids)  # a re-embedded item: its old node becomes a tombstone
        if self.shared is not None:
            self.own_rows()
        self.index.add(as_vectors(vectors))
        self.labels = np.concatenate([self.labels, ids])
        self.alive = np.concatenate([self.alive, ids >= 0])  # -1: a node for a row no item uses

    def reserve(self, n: int) -> None:
        """Make room for ``n`` stored vectors at once: added a batch at a time, FAISS would grow its array by
        doubling, briefly holding the old and the new one (at 1M x 513, 2 GB + 4 GB)."""
        if self.shared is None and self.params["storage"] == "fp32":
            _reserve(faiss.downcast_index(self.index.storage).codes, n * (self.dim * 4))

    def add_whole(self, ids: np.ndarray, read: Callable[[int, int], np.ndarray], batch: int = 65536,
                  progress: str | None = None) -> None:
        """Add the vectors of ``ids`` to an empty float32 graph in one FAISS add, reading them a batch at a time
        (``read(start, stop)``): FAISS links a graph added in many batches worse (1M x 513 clustered, recall@10
        at ef 64: 0.81 in batches of 20,000, 0.96 in one), and one add of a separate copy would hold the
        vectors twice. They are stored first, then added from the stored copy (FAISS copies them onto
        themselves and links them). ``progress``: the description of a bar with an ETA while it links."""
        n = len(ids)
        storage = faiss.downcast_index(self.index.storage)
        if self.params["storage"] != "fp32" or self.index.ntotal or self.shared is not None:
            raise ValueError("only an empty float32 graph is built in one add")
        _reserve(storage.codes, n * self.dim * 4)
        for start in range(0, n, batch):
            storage.add(as_vectors(read(start, min(n, start + batch))))
        stored = faiss.rev_swig_ptr(storage.get_xb(), n * self.dim).reshape(n, self.dim)
        storage.ntotal = 0  # the rows stay: FAISS's add writes them onto themselves, then links them
        with hnsw_progress(self.index, n, progress or "", progress is not None):
            self.index.add(stored)
        self.labels = as_ids(ids).copy()
        self.alive = np.ones(n, dtype=bool)

    def share_rows(self, rows: np.ndarray) -> None:
        """Search ``rows`` (row i is node i, e.g. a memory-mapped vector file) instead of the stored vectors,
        which are freed; saving then writes the graph alone."""
        if self.params["storage"] != "fp32" or rows.shape != (len(self.labels), self.dim):
            raise ValueError(f"a float32 graph of {len(self.labels)} nodes cannot search rows of shape {rows.shape}")
        storage = faiss.IndexFlatIP(self.dim)
        _view(storage.codes, np.ascontiguousarray(rows).reshape(-1).view(np.uint8))
        storage.ntotal = len(rows)
        self._replace_storage(storage)
        self.shared = rows
        self._held.append(rows)

    def own_rows(self, read: Callable[[int, int], np.ndarray] | None = None, room: int = 0, batch: int = 65536) -> None:
        """Hold a copy of the shared rows again (FAISS adds only to vectors it holds), with space for ``room``
        more; ``read(start, stop)`` reads them (default: from the shared rows); mapped links are copied."""
        storage = faiss.IndexFlatIP(self.dim)
        n = len(self.labels)
        _reserve(storage.codes, (n + room) * self.dim * 4)
        for start in range(0, n, batch):
            storage.add(as_vectors(read(start, min(n, start + batch)) if read else self.shared[start:start + batch]))
        if not self.index.hnsw.neighbors.is_owned:
            faiss.copy_array_to_vector(faiss.vector_to_array(self.index.hnsw.neighbors), _owned(self.index.hnsw))
        self._replace_storage(storage)
        self.shared = None

    def _replace_storage(self, storage: Any) -> None:
        old, owned = self.index.storage, self.index.own_fields
        self.index.own_fields = False
        self.index.storage = storage
        self.index.ntotal = storage.ntotal
        self._held.append(storage)
        if owned:
            old.thisown = True  # freed here, now that the index no longer owns it

    def remove(self, ids: np.ndarray) -> None:
        if len(self.labels):
            self.alive &= ~np.isin(self.labels, as_ids(ids))

    @property
    def stale_fraction(self) -> float:
        """Share of graph nodes that are tombstones."""
        return 1.0 - float(self.alive.mean()) if len(self.alive) else 0.0

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               lookup: VectorLookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        mask = self.alive if allowed is None else self.alive & np.isin(self.labels, as_ids(allowed))
        fetch = k * 3 if self.rescores and lookup is not None else k
        params = faiss.SearchParametersHNSW(efSearch=max(self.params["ef_search"], fetch))
        bitmap = None
        if not mask.all():
            bitmap = np.packbits(mask, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        scores, internal = self.index.search(as_vectors(queries), fetch, params=params)  # bitmap still referenced
        ids = np.where(internal >= 0, self.labels[np.maximum(internal, 0)], -1)
        if fetch != k:
            return exact_rescore(queries, ids, k, lookup)
        return scores, ids

    @property
    def ntotal(self) -> int:
        return int(self.alive.sum())

    @property
    def nbytes(self) -> int:
        n = len(self.labels)
        code = self.dim * BYTES_PER_DIM[self.params["storage"]]
        links = self.index.hnsw.neighbors.size() * 4 + self.index.hnsw.offsets.size() * 8
        return n * (code + 8 + 1) + links

    def save(self, path: Path) -> None:
        """As ``VectorIndex.save``; a graph searching shared rows writes its links and levels, not the rows."""
        if self.shared is None:
            return super().save(path)
        hnsw = self.index.hnsw
        for name in GRAPH:
            np.save(path.with_suffix(f".{name}.npy"), faiss.vector_to_array(getattr(hnsw, name)))
        self._save_extra(path)
        path.with_suffix(".json").write_text(json.dumps({
            "kind": self.kind, "dim": self.dim, "params": self.params,
            "graph": {"entry_point": hnsw.entry_point, "max_level": hnsw.max_level}}))
        return None

    @classmethod
    def load_graph(cls, path: Path, dim: int, params: dict[str, Any], graph: dict[str, int], mmap: bool
                   ) -> HNSWIndex:
        """A graph saved without its rows; it searches once ``share_rows`` gives them (links mapped if ``mmap``)."""
        index = cls(dim, **params)
        hnsw = index.index.hnsw
        for name in GRAPH:
            array = np.load(path.with_suffix(f".{name}.npy"), mmap_mode="r" if mmap and name == "neighbors" else None)
            if isinstance(array, np.memmap):
                _view(hnsw.neighbors, array)
                index._held.append(array)
            else:
                faiss.copy_array_to_vector(array, getattr(hnsw, name))
        hnsw.entry_point, hnsw.max_level = graph["entry_point"], graph["max_level"]
        index._load_extra(path, nodes=hnsw.levels.size())
        return index

    def _save_extra(self, path: Path) -> None:
        np.save(path.with_suffix(".labels.npy"), self.labels)
        np.save(path.with_suffix(".alive.npy"), self.alive)

    def _load_extra(self, path: Path, nodes: int | None = None) -> None:
        self.labels = np.load(path.with_suffix(".labels.npy"))
        self.alive = np.load(path.with_suffix(".alive.npy"))
        nodes = self.index.ntotal if nodes is None else nodes
        if not len(self.labels) == len(self.alive) == nodes:
            raise ValueError(f"{path.name} holds {nodes} nodes but {len(self.labels)} labels "
                             f"and {len(self.alive)} flags")


GRAPH = ("levels", "offsets", "neighbors")  # what a graph saved without its rows is


def _view(vector: Any, array: np.ndarray) -> None:
    """Point a FAISS MaybeOwnedVector at ``array``'s memory without copying (the caller keeps it alive)."""
    pointer = faiss.swig_ptr(array)
    vector.is_owned = False
    vector.view_data, vector.view_size = pointer, array.size
    vector.c_ptr, vector.c_size = pointer, array.size


def _reserve(codes: Any, nbytes: int) -> None:
    """Allocate an owned FAISS byte vector's capacity in one go (resizing down keeps the capacity)."""
    size = codes.size()
    if nbytes > size:
        codes.resize(nbytes)
        codes.resize(size)


def _owned(hnsw: Any) -> Any:
    """The graph's link table made an owned (empty) vector, ready to be filled."""
    hnsw.neighbors.is_owned = True
    hnsw.neighbors.view_size = hnsw.neighbors.c_size = 0
    return hnsw.neighbors
