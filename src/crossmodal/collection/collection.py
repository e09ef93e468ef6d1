"""``Collection``: the Python API. A folder of vectors and metadata, bound to the model that made them.

    >>> c = Collection.open("~/photos.cm", model="lite")
    >>> c.index_folder("~/Pictures")
    >>> for hit in c.search("a dog running on a beach", k=5): print(hit.score, hit.path)
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ..encoders import load_encoder, model_folder
from ..encoders.base import Encoder
from ..search import pipeline
from ..search.filters import Condition, where_clause
from ..search.normalise import BANK_FILE, find_bank
from ..search.pipeline import Query, Ranking, Timings
from ..search.rerank import RERANKER_DIR, collection_scorer, find_reranker
from ..search.understand import PLACE_FIELDS
from ..sources.captions import CaptionRecord, read_captions
from ..sources.folders import iter_media
from ..sources.images import DEFAULT_MAX_PIXELS
from ..sources.videos import split_videos
from . import photo_fields
from .atomic import remove_leftovers
from .indexes import IndexManager
from .lock import write_lock
from .manifest import MANIFEST, Manifest
from .moments import any_moments, count_videos, search_kind, videos_of
from .searching import Hit, Searchable, check_search, hits_of
from .store import KINDS, ItemStore, ReadOnlyCollectionError
from .sync import IndexReport, fill_metadata, fill_tokens, index_images, index_texts, refresh_captions
from .upgrade import FINGERPRINT_KEY, MODEL_KEY, UpgradeReport, upgrade
from .video_sync import index_videos

if TYPE_CHECKING:
    from .sparse_index import SparseIndexes
    from .tower_biases import TowerBiases

DEFAULT_MODEL = "lite"
SHARDS_FILE = "shards.json"  # marks a sharded collection's folder (sharded.py)


def folder_gone(folder: Path, stored: int) -> FileNotFoundError:
    """The error of indexing a folder that is not there, whose ``stored`` photos are kept."""
    return FileNotFoundError(f"{folder}: no such file or folder" + (
        f"; its {stored} stored photos are kept (index it with --prune-all to remove them)" if stored else ""))


def own_parts(folder: Path, model: str, name: str) -> list[Path]:
    """Where a collection looks for its model's ``name`` (``bank.npz``, ``reranker/``) before the ones models ship
    with: in its own folder, then in the model's (what `crossmodal train` wrote there travels with the model)."""
    found = model_folder(model)
    return [folder / name, *([found / name] if found is not None else [])]


class Collection(Searchable):
    """Photos and texts embedded by one model, stored in one folder."""

    def __init__(self, folder: Path, manifest: Manifest, encoder: Encoder | None = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self._encoder = encoder
        self.store = ItemStore(folder, manifest.dim)
        self._follow_store()
        self.store.bank = find_bank(manifest.fingerprint, *own_parts(folder, manifest.model, BANK_FILE))
        # An old collection on a read-only mount may lack the tokens table: it then ranks without reranking.
        self.store.reranker = (find_reranker(manifest.fingerprint, *own_parts(folder, manifest.model, RERANKER_DIR))
                               if self.store.has_tokens() else None)
        self.indexes = IndexManager(folder, self.store, manifest)
        # Searches hold it around store and index access (one SQLite connection), not around model calls.
        self.lock = threading.RLock()
        self._moments: tuple[int, bool] = (-1, False)  # (store generation, whether a video's moment is stored)
        self._place_names: dict[tuple[str, int], dict[str, dict[str, str]]] = {}  # (kind, generation) -> places

    def _follow_store(self) -> None:
        """Take the model an upgrade recorded in the store when the manifest still names the old one (a crash
        came between the upgrade's commit and the manifest's write), and mend the manifest when it can."""
        fingerprint = self.store.recorded(FINGERPRINT_KEY)
        if fingerprint is None or fingerprint == self.manifest.fingerprint:
            return
        self.manifest.model, self.manifest.fingerprint = self.store.recorded(MODEL_KEY) or "", fingerprint
        if not self.store.read_only:
            self.manifest.write(self.folder)

    @classmethod
    def open(cls, folder: str | Path, model: str | Encoder | None = None, create: bool = True) -> Collection:
        """Open the collection in ``folder``, creating it (with ``model``, default ``lite``) if needed; a
        sharded collection's folder opens as a ``ShardedCollection``.

        Raises ModelMismatchError if ``model`` is given and is not the model the collection was built with.
        """
        folder = Path(folder).expanduser()
        if (folder / SHARDS_FILE).is_file():  # same search and index API (collection/sharded.py)
            from .sharded import ShardedCollection

            return ShardedCollection.open(folder, model=model)  # type: ignore[return-value]
        if folder.is_dir():
            remove_leftovers(folder)  # e.g. the manifest's temporary file, when creating it was interrupted
        if (folder / MANIFEST).is_file():
            collection = cls(folder, Manifest.read(folder))
            if model is not None:
                try:
                    encoder = load_encoder(model) if isinstance(model, str) else model
                    collection.manifest.check(encoder.name, encoder.fingerprint)
                except BaseException:
                    collection.close()
                    raise
                collection._encoder = encoder
            return collection
        if not create:
            raise FileNotFoundError(f"no collection at {folder} (run `crossmodal index` first)")
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists, is not empty, and is not a crossmodal collection")
        encoder = load_encoder(model or DEFAULT_MODEL) if not isinstance(model, Encoder) else model
        folder.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(model=encoder.name, fingerprint=encoder.fingerprint, dim=encoder.dim)
        manifest.write(folder)
        return cls(folder, manifest, encoder)

    def close(self) -> None:
        self.store.close()

    # -- adding ------------------------------------------------------------------------------------

    def index_folder(self, folder: str | Path, *, prune: bool = True, prune_all: bool = False,
                     include_hidden: bool = False, fields: dict[str, Any] | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True,
                     only: Callable[[str], bool] | None = None, **kwargs: Any) -> IndexReport:
        """Sync the photos below ``folder`` (those whose absolute path ``only`` accepts, when given: a shard's
        share): add new, re-embed changed, drop deleted (with ``prune``).

        A folder with no photos, or gone, keeps its stored photos (an unmounted disk is not a deletion)
        unless ``prune_all``; a folder that is gone and holds nothing stored is a FileNotFoundError.
        """
        folder = Path(folder).expanduser()
        root = None if folder.is_file() else str(folder.absolute())
        if not folder.exists():
            stored = len(self.store.images_under(root))
            if not (stored and prune_all):
                raise folder_gone(folder, stored)
        paths = [p for p in iter_media(folder, include_hidden=include_hidden) if only is None or only(str(p))]
        photos, videos = split_videos(paths)
        with self._writing():
            report = index_images(self.store, self.encoder, photos, root=root, fields=fields,
                                  max_pixels=max_pixels, prune=prune, prune_all=prune_all or bool(videos),
                                  progress=progress, **kwargs)
            if videos or (root is not None and any_moments(self.store)):
                report = report.merge(index_videos(self.store, self.encoder, videos, root=root, fields=fields,
                                                   prune=prune, prune_all=prune_all, others=len(photos),
                                                   progress=progress, report=kwargs.get("report")))
            self._after_adding(progress, read_photos=True)
            self.refresh_indexes(progress)  # the first search must not build the index in the foreground
        return report

    def add_images(self, paths: Iterable[str | Path], *, fields: dict[str, Any] | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False, **kwargs: Any) -> IndexReport:
        """Add (or refresh) the given photo (and video) files; never removes anything."""
        photos, videos = split_videos(paths)
        report = index_images(self.store, self.encoder, photos, fields=fields, max_pixels=max_pixels,
                              progress=progress, **kwargs)
        if videos:
            report = report.merge(index_videos(self.store, self.encoder, videos, fields=fields, progress=progress))
        self._after_adding(progress)
        return report

    def add_texts(self, texts: Sequence[str | CaptionRecord], *, progress: bool = False) -> IndexReport:
        """Add texts (strings, or CaptionRecords carrying fields); empty texts are refused."""
        records = [t if isinstance(t, CaptionRecord) else CaptionRecord(str(t)) for t in texts]
        if any(not r.text.strip() for r in records):
            raise ValueError("empty text: every text must have at least one non-space character")
        report = index_texts(self.store, self.encoder, records, progress=progress)
        self._after_adding(progress)
        return report

    def index_captions(self, path: str | Path, *, prune: bool = True, progress: bool = True,
                       only: Callable[[str], bool] | None = None) -> tuple[IndexReport, list[str]]:
        """Sync the captions of a TSV/CSV/JSONL/text file (those whose text ``only`` accepts, when given: a
        shard's share); returns (report, problems with single rows)."""
        path = Path(path).expanduser().absolute()
        records, problems = read_captions(path)
        records = [r for r in records if only is None or only(r.text)]
        with self._writing():
            reencoded = refresh_captions(self.store, self.encoder, progress=progress)
            report = index_texts(self.store, self.encoder, records, source=str(path), prune=prune, progress=progress)
            report.reencoded = reencoded
            self._after_adding(progress)
            self.refresh_indexes(progress)
        return report, problems

    def upgrade(self, model: str | Encoder | None = None, *, drop_unreadable: bool = False,
                max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True) -> UpgradeReport:
        """Encode every stored item again with ``model`` (default: the model the collection names, as this version
        of crossmodal has it, e.g. lite's newer weights) and switch the collection over to it atomically
        (collection/upgrade.py); nothing to do when it already holds that model's vectors."""
        encoder = model if isinstance(model, Encoder) else load_encoder(model or self.manifest.model)
        if encoder.fingerprint == self.manifest.fingerprint and encoder.name == self.manifest.model:
            return UpgradeReport()
        if encoder.dim != self.manifest.dim:
            raise ValueError(f"{encoder.name} makes {encoder.dim}-d vectors and this collection stores "
                             f"{self.manifest.dim}-d ones: index into a new collection with it")
        with self._writing():
            self.store.reranker = find_reranker(encoder.fingerprint, *own_parts(self.folder, encoder.name,
                                                                                 RERANKER_DIR))
            self.store.bank = None  # the old model's; the new one's biases are computed after the switch
            report = upgrade(self.store, encoder, drop_unreadable=drop_unreadable, max_pixels=max_pixels,
                             progress=progress)
            self.manifest.model, self.manifest.fingerprint = encoder.name, encoder.fingerprint
            self.manifest.write(self.folder)
            self.store.bank = find_bank(encoder.fingerprint, *own_parts(self.folder, encoder.name, BANK_FILE))
            self._encoder = encoder
            for name in ("sparse", "words", "tower_biases"):  # made for the old model
                self.__dict__.pop(name, None)
            self._after_adding(progress)
            for kind in KINDS:
                self.indexes.rebuild(kind)
            self.refresh_indexes(progress)
        return report

    def remove(self, ids: Iterable[int]) -> int:
        """Delete items by id; returns how many were deleted."""
        with self.store.transaction() as db:
            before = self.store.count()
            self.store.delete(db, ids)
        return before - self.store.count()

    # -- searching ---------------------------------------------------------------------------------

    @cached_property
    def sparse(self) -> SparseIndexes:
        """The sparse retriever's indexes (learned sparse retrieval, search/sparse.py), when the model has sparse
        heads: the collection's own (``sparse.npz``), its model folder's, or those its model ships (imported here:
        SciPy only for sparse searches)."""
        from ..search.sparse import SPARSE_FILE, find_sparse
        from .sparse_index import SparseIndexes

        return SparseIndexes(self.folder, self.store,
                             find_sparse(self.manifest.fingerprint, *own_parts(self.folder, self.manifest.model,
                                                                               SPARSE_FILE)))

    @cached_property
    def words(self) -> SparseIndexes:
        """The hybrid retriever's sparse evidence: the photos' stored words and the texts' own, when the
        collection's reranker has a word classifier (search/sparse_words.py)."""
        from ..search.sparse_words import find_words
        from .sparse_index import SparseIndexes

        return SparseIndexes(self.folder, self.store, find_words(self.store.reranker, lambda: self.encoder), "words")

    @cached_property
    def tower_biases(self) -> TowerBiases:
        """The photos' biases for the queries the model's multilingual tower encodes, against that tower's own
        bank (collection/tower_biases.py); none when the model has no tower or the tower no bank."""
        from ..encoders.multilingual import find_multilingual
        from .tower_biases import TowerBiases

        # the model's tower when it is loaded (its queries' encoder), else the one it ships: a shard that is handed
        # encoded queries loads no model for this
        tower = self._encoder.multilingual if self._encoder is not None else find_multilingual(
            self.manifest.fingerprint)
        return TowerBiases(self.folder, self.store, None if tower is None else tower.bank)

    def matches(self, kind: str, condition: Condition) -> bool:
        """Whether any item of ``kind`` meets ``condition`` (a date or place read from a query's words)."""
        sql, params = where_clause(kind, None, [condition])
        with self.lock:
            return self.store.db.execute(f"SELECT 1 FROM items WHERE {sql} LIMIT 1", params).fetchone() is not None

    def places(self, kind: str) -> dict[str, dict[str, str]]:
        """The place names stored with items of ``kind``: field -> lower-cased value -> value."""
        with self.lock:
            key = (kind, self.store.generation)
            if key not in self._place_names:
                self._place_names = {k: v for k, v in self._place_names.items() if k[0] != kind}
                self._place_names[key] = self._places(kind)
            return self._place_names[key]

    def _places(self, kind: str) -> dict[str, dict[str, str]]:
        return {key: {value.lower(): value for value in self.store.field_values(kind, key)} for key in PLACE_FIELDS}

    def search_queries(self, queries: Sequence[Query], *, k: int = 10, kind: str = "image", path: str | None = None,
                       where: Sequence[Condition] = (), ranking: Ranking | None = None,
                       timings: Timings | None = None) -> list[list[Hit]]:
        """Top-``k`` items for each query, ranked together by the search pipeline (one matrix product or
        one index call for all). Each query's ``exclude`` ids are left out; pages stay full."""
        kind, where = search_kind(kind, where)
        check_search(self.manifest, queries, k, kind)
        ranked = pipeline.run(self, queries, k=k, kind=kind, allowed=self.allowed(kind, path, where),
                              ranking=ranking or Ranking(), timings=timings)
        return hits_of(ranked, self.store.get, self.lock, kind)

    def allowed(self, kind: str, path: str | None, where: Sequence[Condition]) -> np.ndarray | None:
        """Ids of the items of ``kind`` that pass a path glob and conditions (None: no filter, all pass)."""
        if not (path or where):
            return None
        sql, params = where_clause(kind, path, list(where))
        with self.lock:
            return self.store.ids_where(sql, params)

    def candidates(self, queries: Sequence[Query], *, fetch: int, kind: str, allowed: np.ndarray | None,
                   ranking: Ranking, timings: Timings) -> list[pipeline.Ranked]:
        """The retrieve stage's candidates (search/pipeline.py ``Source``)."""
        return pipeline.candidates(self, queries, fetch=fetch, kind=kind, allowed=allowed, ranking=ranking,
                                   timings=timings)

    def vectors(self, kind: str, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of items of ``kind`` by id, in the order of ``ids``."""
        with self.lock:
            stored_ids, matrix = self.store.matrix(kind)
            return np.asarray(matrix[np.searchsorted(stored_ids, ids)], dtype=np.float32)

    def groups(self, kind: str, ids: np.ndarray) -> dict[int, str]:
        """The video of each id that is a moment (the pipeline's collapse stage); nothing in a photo-only one."""
        with self.lock:
            if kind != "image" or not self._has_moments(self.store.generation):
                return {}
            return videos_of(self.store, sorted({int(i) for i in ids}))

    def _has_moments(self, generation: int) -> bool:
        """Whether a moment is stored, asked once per store generation (this collection's own answer: the shards
        of a sharded collection must not evict each other's)."""
        if self._moments[0] != generation:
            self._moments = (generation, any_moments(self.store))
        return self._moments[1]

    def reranker_name(self) -> str | None:
        """The name of the reranker whose tokens this collection stores, if any."""
        return None if self.store.reranker is None else self.store.reranker.name

    def reranker(self, kind: str) -> tuple[pipeline.Scorer, float] | None:
        """The reranker of this collection's model for items of ``kind`` (scorer, fusion weight), if any."""
        reranker = self.store.reranker
        if reranker is None or not self.encoder.rerank_inputs:  # e.g. an ONNX export older than the reranker
            return None
        return collection_scorer(self.store, self.encoder, reranker, kind, self.lock), reranker.weight

    def _after_adding(self, progress: bool = False, read_photos: bool = False) -> None:
        """What adding owes stored items: normalisation biases they lack (stored before the bank existed),
        no tokens of content no longer stored, and, for a folder run (``read_photos``), the reranker tokens
        of photos stored before the reranker existed (each photo is read again, so never on an upload) and
        the file metadata of photos stored before it was read (their headers only)."""
        self.store.fill_biases()
        if read_photos and self.store.reranker is not None:
            fill_tokens(self.store, self.encoder, progress=progress)
        if read_photos:
            fill_metadata(self.store, progress=progress)
        self.store.drop_stale_tokens()
        photo_fields.forget_stale(self.store.db)

    def _writing(self) -> AbstractContextManager[None]:
        """The collection's write lock, held by a sync run so that two runs never race over the same rows."""
        if self.store.read_only:
            raise ReadOnlyCollectionError(f"{self.folder} is read-only: it can be searched, but indexing needs "
                                          "write access to it")
        return write_lock(self.folder, on_wait=lambda message: tqdm.write(message, file=sys.stderr))

    # -- indexes -----------------------------------------------------------------------------------

    def configure_index(self, kind: str = "auto", memory: int | None = None, recall: float = 0.95) -> None:
        """Choose how vectors are indexed (``auto`` lets the planner decide) and rebuild the indexes."""
        from ..index import KINDS as INDEX_KINDS

        if kind != "auto" and kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose auto or one of {', '.join(INDEX_KINDS)}")
        if not 0 < recall <= 1:
            raise ValueError(f"recall must be in (0, 1], not {recall}")
        self.manifest.index.update({"kind": kind, "memory": memory, "recall": recall})
        self.manifest.write(self.folder)
        for item_kind in KINDS:
            self.indexes.rebuild(item_kind)

    def refresh_indexes(self, progress: bool = False) -> None:
        """Bring every index up to date now, so that the next search finds it ready (``index`` does this
        at its end; otherwise the next search does it), compacting vector files with many unused rows first;
        the hybrid retriever's word index and the multilingual tower's photo biases too, when there are ones."""
        for item_kind in KINDS:
            self.store.compact(item_kind)
            self.indexes.get(item_kind, progress=progress)
            self.words.get(item_kind)  # None, at once, when the collection's reranker has no word classifier
        self.tower_biases.get("image")  # None, at once, when the model has no multilingual tower with a bank

    # -- facts -------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What is in the collection: model, counts, size on disk, unreadable files."""
        return {
            "collection": str(self.folder),
            "model": self.manifest.model,
            "fingerprint": self.manifest.fingerprint,
            "dim": self.manifest.dim,
            "images": self.store.count("image"),
            "texts": self.store.count("text"),
            **self._videos(),
            "unreadable": len(self.store.failures()),
            "bytes_on_disk": self.store.disk_bytes(),
            "format_version": self.manifest.format_version,
            "index": dict(self.manifest.index),
            "ranking": self._ranking_state(),
        }

    def _videos(self) -> dict[str, str]:
        """``info``'s line on videos, when there are any: how many, and how many photo items are their moments."""
        videos, count = count_videos(self.store)
        return {"videos": f"{videos} ({count} moments, counted among the photos)"} if videos else {}

    def _ranking_state(self) -> str:
        """What the ranking pipeline can use here, in one line (``info``)."""
        bank, reranker = self.store.bank, self.store.reranker
        if bank is None:
            norm = "off (no bank for this model: `crossmodal bank`)"
        elif all(self.store.biases(kind) is not None for kind in KINDS):
            norm = f"on (bank {bank.id})"
        else:
            norm = "pending (run `crossmodal index` to compute the biases)"
        if reranker is None:
            return f"{norm}; reranker: none for this model"
        missing = len(self.store.missing_tokens())
        return f"{norm}; reranker: {reranker.name}" + (f" ({missing} photos wait for `index`)" if missing else "")
