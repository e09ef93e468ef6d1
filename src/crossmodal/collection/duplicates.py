"""Near-duplicate photos, for review (as Immich's duplicate view): exact copies (one content hash) and
photos whose vectors are at least ``threshold`` alike (cosine), grouped as the connected components of
the "is a copy of" graph. Pairs come from an exact search over the stored vectors (blocked matrix products),
or, for a collection searched through an approximate index (FAISS), from each photo's nearest neighbours in it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..defaults import DUPLICATE_THRESHOLD
from ..search.normalise import augment_queries, index_dim
from ..sources.photo_files import dimensions
from .moments import is_moment
from .paths import shown

if TYPE_CHECKING:
    from .collection import Collection

# The default threshold was chosen on half of Flickr8k dev with synthetic crops, re-encodes and resizes, and
# measured on the other half (benchmarks/duplicates.py, docs/benchmarks.md).
DEFAULT_THRESHOLD = DUPLICATE_THRESHOLD
NEIGHBOURS = 16  # neighbours per photo through an approximate index; larger groups join through them
BLOCK = 4096  # photos per index call
BLOCK_FLOATS = 1 << 24  # similarities computed at once by the exact search (64 MB)


@dataclass
class Copy:
    """One photo of a group: ``similarity`` is its cosine to the group's first photo, ``exact`` whether it
    has the same content; ``bytes`` is its stored file size, dimensions come from its header and ``taken``
    from its EXIF date field."""

    id: int
    path: str
    bytes: int | None
    similarity: float
    exact: bool
    width: int | None = None
    height: int | None = None
    taken: str | None = None


@dataclass
class Group:
    """Photos that are copies of each other, the one to keep first (most pixels, then most bytes)."""

    photos: list[Copy]

    def to_dict(self) -> dict[str, Any]:
        return {"size": len(self.photos), "photos": [{**asdict(p), "path": shown(p.path)} for p in self.photos]}


def similar_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a < b) of unit ``vectors`` whose inner product is at least ``threshold``: exact, each block
    of rows against the rows from it on (half the products of a full range search), at most ``BLOCK_FLOATS``
    similarities held at once."""
    n = len(vectors)
    rows = max(64, BLOCK_FLOATS // max(n, 1))
    firsts, seconds = [], []
    for start in range(0, n, rows):
        block = np.asarray(vectors[start:start + rows], dtype=np.float32)
        hit = block @ np.asarray(vectors[start:], dtype=np.float32).T >= np.float32(threshold)
        hit[np.arange(len(block)), np.arange(len(block))] = False  # each photo with itself
        some = np.flatnonzero(hit.any(axis=1))  # few rows have a copy: look for it in those only
        a, b = np.nonzero(hit[some])
        a = some[a]
        keep = b > a  # b counts from ``start``: the pair's second row lies after its first
        firsts.append(a[keep] + start)
        seconds.append(b[keep] + start)
    return _joined(firsts), _joined(seconds)


def neighbour_pairs(collection: Collection, ids: np.ndarray, vectors: np.ndarray, threshold: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs from each photo's ``NEIGHBOURS`` nearest in the collection's approximate index, kept when
    their (exactly rescored) similarity is at least ``threshold``."""
    index = collection.indexes.get("image")
    lookup = collection.indexes.lookup("image", index)
    firsts, seconds = [], []
    for start in range(0, len(vectors), BLOCK):
        block = np.asarray(vectors[start:start + BLOCK], dtype=np.float32)
        queries = augment_queries(block, np.float32(0.0), index_dim(block.shape[1], index.kind))
        scores, found = index.query(queries, NEIGHBOURS + 1, lookup=lookup)
        rows = np.repeat(np.arange(start, start + len(block)), found.shape[1])
        found, scores = found.ravel(), scores.ravel()
        keep = (found >= 0) & (scores >= threshold)
        rows, other = rows[keep], np.searchsorted(ids, found[keep])
        firsts.append(np.minimum(rows, other)[rows != other])
        seconds.append(np.maximum(rows, other)[rows != other])
    return _joined(firsts), _joined(seconds)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A component label for each of ``n`` nodes joined by the edges (a[i], b[i]): the smallest label of an
    edge's ends spreads to both, with pointer jumping, until nothing changes."""
    labels = np.arange(n)
    while True:
        low = np.minimum(labels[a], labels[b])
        spread = labels.copy()
        np.minimum.at(spread, a, low)
        np.minimum.at(spread, b, low)
        spread = spread[spread]
        if np.array_equal(spread, labels):
            return labels
        labels = spread


def find_duplicates(collection: Collection, threshold: float = DEFAULT_THRESHOLD, read_sizes: bool = True
                    ) -> list[Group]:
    """Groups of copies among the collection's photos (videos' moments left out), largest first; ``read_sizes``
    reads each grouped photo's header for its dimensions (skipped when only the grouping matters, as in
    benchmarks)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the threshold is a cosine similarity in (0, 1], not {threshold}")
    with collection.lock:  # the snapshot's vectors stay readable after: a change writes a new file
        ids, vectors = collection.store.matrix("image")
        hashes = dict(collection.store.db.execute("SELECT id, hash FROM items WHERE kind = 'image'"))
        near = None if collection.indexes.get("image") is None else neighbour_pairs(collection, ids, vectors,
                                                                                     threshold)
    near = near or similar_pairs(vectors, threshold)
    groups = copy_groups(len(ids), near, same_content([hashes[int(i)] for i in ids]))
    with collection.lock:
        items = collection.store.get(ids[[row for rows in groups for row in rows]])
    out = []
    for rows in groups:
        # A video's moments are alike by nature (a still shot sampled every 2 s): not copies to clean up.
        grouped = [items[int(ids[r])] for r in rows if int(ids[r]) in items and not is_moment(items[int(ids[r])])]
        shapes = {it.id: dimensions(it.path, it.size, it.mtime) for it in grouped} if read_sizes else {}
        if len(grouped) > 1:
            out.append(_group(grouped, ids, vectors, shapes))
    out.sort(key=lambda g: (-len(g.photos), -min(p.similarity for p in g.photos), g.photos[0].id))
    return out


def copy_groups(n: int, *pairs: tuple[np.ndarray, np.ndarray]) -> list[list[int]]:
    """The rows of each group of two or more of ``n`` rows joined by any of the row ``pairs``."""
    a = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, dtype=np.int64)
    b = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, dtype=np.int64)
    labels = components(n, a, b)
    members: dict[int, list[int]] = defaultdict(list)
    for row in np.unique(np.concatenate([a, b])):
        members[int(labels[row])].append(int(row))
    return list(members.values())


def same_content(hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs of photos with the same content hash (each joined to the first row with that hash)."""
    first: dict[str, int] = {}
    pairs = [(first.setdefault(h, row), row) for row, h in enumerate(hashes)]
    kept = np.array([p for p in pairs if p[0] != p[1]], dtype=np.int64).reshape(-1, 2)
    return kept[:, 0], kept[:, 1]


def _group(grouped: list[Any], ids: np.ndarray, vectors: np.ndarray, shapes: dict[int, tuple[int, int] | None]
           ) -> Group:
    """One group of stored items, the photo to keep first: most pixels, then most bytes, then the oldest id."""

    def rank(item: Any) -> tuple[int, int, int]:
        shape = shapes.get(item.id) or (0, 0)
        return -shape[0] * shape[1], -(item.size or 0), item.id

    grouped = sorted(grouped, key=rank)
    unit = np.asarray(vectors[np.searchsorted(ids, [it.id for it in grouped])], dtype=np.float32)
    photos = []
    for item, similarity in zip(grouped, unit @ unit[0], strict=True):
        width, height = shapes.get(item.id) or (None, None)
        photos.append(Copy(item.id, item.path, item.size, round(float(min(similarity, 1.0)), 4),
                           item.hash == grouped[0].hash, width, height, (item.fields or {}).get("taken")))
    return Group(photos)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
