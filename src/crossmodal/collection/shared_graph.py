"""HNSW graphs that search a kind's vector file in place, so that the vectors are stored once.

Node i of such a graph is row i of the file it was built on (the file is compacted first, so its rows
are the items in id order); the graph is saved without vectors and names its file. Rows appended since
(new, re-embedded or re-biased items) become new nodes in order, rows no item uses any more are
tombstones. A compacted file renumbers the rows: graphs over the old file keep answering (the old file
stays until no saved index names it) until they are rebuilt over the new one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..index.planner import IndexPlan
from .store import ItemStore

if TYPE_CHECKING:
    from ..index.hnsw import HNSWIndex


def shareable(plan: IndexPlan) -> bool:
    """Does the plan's index hold float32 vectors as the file stores them (a graph that can search it)?"""
    return plan.kind == "hnsw" and plan.params.get("storage") == "fp32"


def build(store: ItemStore, name: str, ids: np.ndarray, plan: IndexPlan, progress: bool) -> HNSWIndex:
    """A graph over vector file ``name`` whose rows are the items ``ids`` (compacted: in id order), read from
    the file a batch at a time, linked in one add (HNSWIndex.add_whole), then searching the file in place."""
    from ..index import make_index

    index = make_index("hnsw", store.files.width, **plan.params)
    index.add_whole(ids, lambda start, stop: store.files.read(name, start, stop),
                    progress=f"building the {name.split('.')[0]} index" if progress else None)
    index.share_rows(store.files.rows(name, len(ids)))
    return index


def extend(store: ItemStore, kind: str, index: HNSWIndex, added: np.ndarray, count: int, progress: bool) -> None:
    """Add the rows of the vector file of ``kind`` appended since the graph was saved, up to ``count`` (read
    before ``added``), as nodes: ``added`` ids (written since) label theirs, the others (rewritten again or
    deleted since) are tombstones; an item whose row did not change (only its bias was cleared) keeps its
    node, and one written after ``count`` waits for the next update. ``added`` ids were already removed."""
    from ..index import add_in_batches

    name = store.vector_file(kind)[0]
    nodes = len(index.labels)
    rows = store.vector_rows(added)
    kept = (rows >= 0) & (rows < nodes)
    index.alive[rows[kept]] = index.labels[rows[kept]] == added[kept]
    labels = np.full(count - nodes, -1, dtype=np.int64)
    new = (rows >= nodes) & (rows < count)
    labels[rows[new] - nodes] = added[new]
    if len(labels):
        index.own_rows(lambda start, stop: store.files.read(name, start, stop), room=len(labels))
        add_in_batches(index, labels, store.files.reader(name, nodes, count), progress, f"updating the {kind} index")
    index.share_rows(store.files.rows(name, count))
