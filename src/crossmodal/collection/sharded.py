"""Sharded collections: items spread over N shard folders by a stable hash, searched as one collection.

A sharded collection is a folder holding ``shards.json`` and the shards ``shard-000`` ... each a collection in
the usual format, so no shard must hold the whole collection. An item's shard is fixed by a hash of its
absolute path (photos) or its text; its id is ``local id x N + shard``, as stable as the shard's own ids.

A search fans out to every shard (threads here; Ray actors across machines: distributed/shards.py); each
returns its best candidates by the same normalised score, and the merged list goes through the one ranking
pipeline's rerank, cut and diversify stages (search/pipeline.py): the answer one big collection would give.
A shard that does not answer within ``timeout`` is left out and the answer says so (``Hits.missing_shards``).
The keyword retriever's BM25 statistics are each shard's own (as a search engine's default fan-out does).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from functools import cached_property, partial, reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..defaults import DEFAULT_SHARD_TIMEOUT
from ..encoders import load_encoder
from ..encoders.base import Encoder
from ..search import hybrid, pipeline
from ..search.filters import Condition
from ..search.pipeline import Query, Ranked, Ranking, Timings
from ..search.rerank import RERANKER_DIR, collection_scorer, find_reranker
from ..sources.captions import CaptionRecord
from ..sources.folders import iter_media
from .atomic import atomic_write_json
from .collection import DEFAULT_MODEL, SHARDS_FILE, Collection, folder_gone, own_parts
from .manifest import MANIFEST, Manifest
from .moments import search_kind
from .searching import Hits, Searchable, check_search, hits_of
from .store import Item, ReadOnlyCollectionError
from .sync import IndexReport

if TYPE_CHECKING:
    from ..rerank.runtime import Reranker

FORMAT = "crossmodal-shards"
Args = dict[int, tuple]  # shard -> the arguments of one call on it
Answers = tuple[dict[int, Any], list[int]]  # results by shard, the shards that did not answer


def is_sharded(folder: Path) -> bool:
    """Whether ``folder`` holds a sharded collection (its shard list)."""
    return (Path(folder) / SHARDS_FILE).is_file()


def shard_of(key: str, n: int) -> int:
    """The shard of an item's key (a photo's absolute path, a text): a hash, the same on every machine and run."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def shard_folders(folder: Path, n: int) -> list[Path]:
    """The folders of the first ``n`` shards of a sharded collection."""
    return [Path(folder) / f"shard-{i:03d}" for i in range(n)]


def shard_count(folder: Path) -> int:
    """How many shards the sharded collection in ``folder`` has (its ``shards.json``)."""
    data = json.loads((Path(folder) / SHARDS_FILE).read_text())
    if data.get("format") != FORMAT or not isinstance(data.get("shards"), int) or data["shards"] < 1:
        raise ValueError(f"{folder / SHARDS_FILE} is not a crossmodal shard list")
    return data["shards"]


def read_manifest(folder: Path) -> Manifest:
    """The manifest of a collection, sharded (its first shard's: all shards share the model) or not."""
    return Manifest.read(shard_folders(folder, 1)[0] if is_sharded(folder) else Path(folder))


class Fanout(Protocol):
    """Calls ``fn(shard's collection, *args)`` on several shards at once: threads (``LocalShards``) or Ray actors."""

    n: int

    def call(self, fn: Callable[..., Any], args: Args, timeout: float | None = None) -> Answers:
        """Results by shard, and the shards that did not answer within ``timeout`` (or are gone)."""
        ...

    def close(self) -> None: ...


class LocalShards:
    """The shards of a collection opened in this process, each call on its own thread (NumPy and SQLite release
    the GIL, so the shards' searches overlap)."""

    def __init__(self, collections: list[Collection]) -> None:
        self.collections = collections
        self.n = len(collections)
        self._pool = ThreadPoolExecutor(self.n, thread_name_prefix="shard")

    def call(self, fn: Callable[..., Any], args: Args, timeout: float | None = None) -> Answers:
        futures = {s: self._pool.submit(fn, self.collections[s], *a) for s, a in args.items()}
        done, _ = wait(futures.values(), timeout=timeout)
        return ({s: f.result() for s, f in futures.items() if f in done},
                [s for s, f in futures.items() if f not in done])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for c in self.collections:
            c.close()


def everywhere(n: int, *args: Any) -> Args:
    """The same arguments for a call on each of ``n`` shards."""
    return {s: args for s in range(n)}


def split_ids(ids: Iterable[int], n: int) -> dict[int, list[int]]:
    """Global ids grouped by shard, as the shard's own ids."""
    out: dict[int, list[int]] = {}
    for i in ids:
        out.setdefault(int(i) % n, []).append(int(i) // n)
    return out


def scatter(ids: Iterable[int], n: int, found: dict[int, np.ndarray], out: np.ndarray) -> np.ndarray:
    """Rows each shard answered for its ids (in ``split_ids`` order) put into ``out`` in the order of ``ids``."""
    shards = np.asarray(ids, np.int64) % n
    for s, rows in found.items():
        out[shards == s] = rows
    return out


def global_item(item: Item, shard: int, n: int) -> Item:
    """A shard's stored item under its global id."""
    return replace(item, id=item.id * n + shard)


def merge(answers: dict[int, Ranked], n: int, fetch: int) -> Ranked:
    """The best ``fetch`` of several shards' ranked lists (scores, shard ids), in global ids."""
    if not answers:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    scores = np.concatenate([answers[s][0] for s in answers]).astype(np.float32)
    ids = np.concatenate([np.asarray(answers[s][1], np.int64) * n + s for s in answers])
    order = np.lexsort((ids, -scores))[:fetch]
    return scores[order], ids[order]


def merge_reports(reports: Sequence[IndexReport]) -> IndexReport:
    """One report for a run over every shard."""
    return reduce(IndexReport.merge, reports, IndexReport())


# -- what a shard is asked (module functions: a Ray actor receives them by reference) ---------------------------

def _candidates(c: Collection, queries: list[Query], fetch: int, kind: str, path: str | None,
                where: tuple[Condition, ...], ranking: Ranking) -> tuple[list[Ranked], dict[int, str], dict[int, Item]]:
    """A shard's candidates, with what the router needs of them next (the videos of moments, the stored items),
    so that a search costs the shard one call, not three."""
    lists = c.candidates(queries, fetch=fetch, kind=kind, allowed=c.allowed(kind, path, list(where)),
                         ranking=ranking, timings=Timings())
    ids = np.concatenate([found for _, found in lists])
    with c.lock:
        return lists, c.groups(kind, ids), c.store.get(sorted({int(i) for i in ids}))


def _words_best(c: Collection, queries: list[Query], kind: str, path: str | None, where: tuple[Condition, ...],
                reranked: bool) -> list[float]:
    """A shard's best caption-word score of each query among the items it may find (search/hybrid.py)."""
    allowed = c.allowed(kind, path, list(where))
    with c.lock:
        return hybrid.words_best(c, queries, kind=kind, allowed=allowed, reranked=reranked)


def _store(c: Collection, method: str, *args: Any) -> Any:
    with c.lock:
        return getattr(c.store, method)(*args)


def _generation(c: Collection) -> int:
    with c.lock:
        return c.store.generation


def _method(c: Collection, method: str, *args: Any) -> Any:
    return getattr(c, method)(*args)


def _in_shard(shard: int, n: int, key: str) -> bool:
    return shard_of(key, n) == shard


class ShardedCollection(Searchable):
    """A collection kept in N shards (see the module's docstring); searched like a ``Collection``."""

    def __init__(self, folder: Path, manifest: Manifest, shards: Fanout, encoder: Encoder | None = None,
                 timeout: float | None = DEFAULT_SHARD_TIMEOUT) -> None:
        self.folder, self.manifest, self.shards, self.timeout = folder, manifest, shards, timeout
        self.n = shards.n
        self._encoder = encoder
        self.lock = threading.RLock()  # the shards lock their own stores; this one only satisfies the server's use
        self.store = ShardedStore(self)

    @classmethod
    def create(cls, folder: str | Path, shards: int, model: str | Encoder | None = None) -> ShardedCollection:
        """A new, empty collection of ``shards`` shards in ``folder`` (absent or empty)."""
        folder = Path(folder).expanduser()
        if shards < 1:
            raise ValueError(f"--shards must be at least 1, not {shards}")
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not empty: shards are chosen when a collection is made")
        encoder = model if isinstance(model, Encoder) else load_encoder(model or DEFAULT_MODEL)
        folder.mkdir(parents=True, exist_ok=True)
        # The shard list first: a run cut short after it leaves a sharded collection whose missing shards
        # ``open`` creates empty, never a folder that opens as something else.
        atomic_write_json(folder / SHARDS_FILE, {"format": FORMAT, "shards": shards})
        return cls.open(folder, model=encoder)

    @classmethod
    def open(cls, folder: str | Path, model: str | Encoder | None = None, fanout: Fanout | None = None,
             timeout: float | None = DEFAULT_SHARD_TIMEOUT) -> ShardedCollection:
        """Open a sharded collection; its shards in this process unless ``fanout`` reaches them elsewhere."""
        folder = Path(folder).expanduser()
        n = shard_count(folder)
        encoder = model if isinstance(model, Encoder) else (load_encoder(model) if model else None)
        folders = shard_folders(folder, n)
        if fanout is None:
            absent = [f for f in folders if not (f / MANIFEST).is_file()]
            if absent:  # made, and cut short before every shard was: they start empty
                known = next((Manifest.read(f).model for f in folders if f not in absent), DEFAULT_MODEL)
                encoder = encoder or load_encoder(known)
                for f in absent:
                    Collection.open(f, model=encoder).close()
            fanout = LocalShards([Collection.open(f, model=encoder, create=False) for f in folders])
        return cls(folder, Manifest.read(folders[0]), fanout, encoder, timeout)

    def _loaded(self, encoder: Encoder) -> None:
        """The model, loaded once: the shards held here share it."""
        for c in getattr(self.shards, "collections", ()):
            c._encoder = c._encoder or encoder

    def _local(self) -> list[Collection]:
        """The shard collections this process holds (and can write)."""
        if not isinstance(self.shards, LocalShards):
            raise ReadOnlyCollectionError(f"{self.folder}: shards served by Ray actors are searched, not written; "
                                          "index the collection with `crossmodal index`")
        return self.shards.collections

    def close(self) -> None:
        self.shards.close()

    def _call(self, fn: Callable[..., Any], args: Args, missing: set[int] | None = None) -> dict[int, Any]:
        """Results of a call on the shards in ``args``; the shards that did not answer in time join ``missing``
        (without it, a shard that does not answer is an error: writes and counts must not be partial)."""
        results, late = self.shards.call(fn, args, self.timeout if missing is not None else None)
        if missing is not None:
            missing.update(late)
        elif late:
            raise TimeoutError(f"shards {late} of {self.folder} did not answer")
        return results

    # -- adding ------------------------------------------------------------------------------------

    def index_folder(self, folder: str | Path, *, prune: bool = True, prune_all: bool = False,
                     include_hidden: bool = False, progress: bool = True, **kwargs: Any) -> IndexReport:
        """Sync the photos below ``folder``, each into its shard (``Collection.index_folder``'s rules)."""
        folder = Path(folder).expanduser()
        self.encoder  # noqa: B018 - loaded once, for every shard
        shards = self._local()
        chosen = range(self.n)
        if not folder.exists():
            counts = [len(c.store.images_under(str(folder.absolute()))) for c in shards]
            if not (any(counts) and prune_all):
                raise folder_gone(folder, sum(counts))
            chosen = [s for s in chosen if counts[s]]
        # Photos in the folder: a shard whose share is empty was emptied, not unmounted.
        found = folder.exists() and next(iter(iter_media(folder, include_hidden=include_hidden)), None) is not None
        return merge_reports([shards[s].index_folder(folder, prune=prune, prune_all=prune_all or found,
                                                     include_hidden=include_hidden, progress=progress,
                                                     only=partial(_in_shard, s, self.n), **kwargs) for s in chosen])

    def add_images(self, paths: Iterable[str | Path], **kwargs: Any) -> IndexReport:
        """Add (or refresh) photo files, each in its shard; never removes anything."""
        groups: dict[int, list[str]] = {}
        for p in paths:
            key = str(Path(p).expanduser().absolute())
            groups.setdefault(shard_of(key, self.n), []).append(key)
        self.encoder  # noqa: B018 - loaded once, for every shard
        shards = self._local()
        return merge_reports([shards[s].add_images(group, **kwargs) for s, group in groups.items()])

    def add_texts(self, texts: Sequence[str | CaptionRecord], *, progress: bool = False) -> IndexReport:
        """Add texts, each in its shard; empty texts are refused."""
        records = [t if isinstance(t, CaptionRecord) else CaptionRecord(str(t)) for t in texts]
        if any(not r.text.strip() for r in records):
            raise ValueError("empty text: every text must have at least one non-space character")
        groups: dict[int, list[CaptionRecord]] = {}
        for r in records:
            groups.setdefault(shard_of(r.text, self.n), []).append(r)
        self.encoder  # noqa: B018 - loaded once, for every shard
        shards = self._local()
        return merge_reports([shards[s].add_texts(group, progress=progress) for s, group in groups.items()])

    def index_captions(self, path: str | Path, *, prune: bool = True, progress: bool = True
                       ) -> tuple[IndexReport, list[str]]:
        """Sync a caption file's captions, each into its shard."""
        reports, problems = [], []
        self.encoder  # noqa: B018 - loaded once, for every shard
        for s, c in enumerate(self._local()):
            report, problems = c.index_captions(path, prune=prune, progress=progress,
                                                only=partial(_in_shard, s, self.n))
            reports.append(report)
        return merge_reports(reports), problems

    def remove(self, ids: Iterable[int]) -> int:
        """Delete items by id; returns how many were deleted."""
        return sum(self._call(_method, {s: ("remove", local) for s, local in split_ids(ids, self.n).items()}
                              ).values())

    def refresh_indexes(self, progress: bool = False) -> None:
        """Bring every shard's indexes up to date."""
        self._call(_method, everywhere(self.n, "refresh_indexes", progress))

    def configure_index(self, kind: str = "auto", memory: int | None = None, recall: float = 0.95) -> None:
        """Choose how each shard indexes its vectors; a memory budget is the whole collection's, split evenly."""
        self._call(_method, everywhere(self.n, "configure_index", kind, memory and memory // self.n, recall))
        self.manifest = Manifest.read(shard_folders(self.folder, 1)[0])

    # -- searching ---------------------------------------------------------------------------------

    def search_queries(self, queries: Sequence[Query], *, k: int = 10, kind: str = "image", path: str | None = None,
                       where: Sequence[Condition] = (), ranking: Ranking | None = None,
                       timings: Timings | None = None) -> list[Hits]:
        """Top-``k`` items for each query over every shard, ranked by the one pipeline (``Collection``'s rules);
        each page names the shards that did not answer in time."""
        kind, where = search_kind(kind, where)
        check_search(self.manifest, queries, k, kind)
        search = ShardedSearch(self, path, tuple(where))
        ranked = pipeline.run(search, queries, k=k, kind=kind, allowed=None, ranking=ranking or Ranking(),
                              timings=timings)
        pages = hits_of(ranked, search.get, self.lock, kind)
        for page in pages:
            page.missing_shards = tuple(sorted(search.missing))
        return pages

    @cached_property
    def _reranker(self) -> Reranker | None:
        """The reranker whose tokens the shards store (the one the first shard finds), or None."""
        first = self._call(_method, {0: ("reranker_name",)})[0]
        return None if first is None else find_reranker(self.manifest.fingerprint, *own_parts(
            shard_folders(self.folder, 1)[0], self.manifest.model, RERANKER_DIR))

    def reranker(self, kind: str, search: ShardedSearch | None = None) -> tuple[pipeline.Scorer, float] | None:
        """The reranker for items of ``kind`` (scorer, fusion weight), if any; run here, on the candidates' tokens
        and texts that ``search`` reads from their shards (a shard late to answer joins its missing shards, and
        the query is then not reranked)."""
        reranker = self._reranker
        if reranker is None or not self.encoder.rerank_inputs:
            return None
        scorer = collection_scorer(search or ShardedSearch(self, None, ()), self.encoder, reranker, kind, self.lock)

        def scores(query: Query, ids: np.ndarray) -> np.ndarray | None:
            try:
                return scorer(query, ids)
            except KeyError:  # a candidate text whose shard did not answer
                return None

        return scores, reranker.weight

    def matches(self, kind: str, condition: Condition) -> bool:
        return any(self._call(_method, everywhere(self.n, "matches", kind, condition), set()).values())

    def places(self, kind: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for names in self._call(_method, everywhere(self.n, "places", kind), set()).values():
            for key, values in names.items():
                out.setdefault(key, {}).update(values)
        return out

    def info(self) -> dict[str, Any]:
        """What is in the collection, summed over the shards, and each shard's counts."""
        infos = self._call(_method, everywhere(self.n, "info"))
        first = infos[0]
        out = {key: first[key] for key in ("model", "fingerprint", "dim", "format_version", "index", "ranking")}
        for key in ("images", "texts", "unreadable", "bytes_on_disk"):
            out[key] = sum(info[key] for info in infos.values())
        out["shards"] = [{"shard": s, "images": infos[s]["images"], "texts": infos[s]["texts"]}
                         for s in range(self.n)]
        return {"collection": str(self.folder), **out}


class ShardedSearch:
    """One search over the shards, as the pipeline's ``Source``: it remembers the shards that did not answer."""

    def __init__(self, collection: ShardedCollection, path: str | None, where: tuple[Condition, ...]) -> None:
        self.c, self.path, self.where = collection, path, where
        self.missing: set[int] = set()
        self._videos: dict[int, str] = {}  # global id -> its video, for candidates that are moments
        self._items: dict[int, Item] = {}  # global id -> stored item, for every candidate

    def candidates(self, queries: Sequence[Query], *, fetch: int, kind: str, allowed: Any, ranking: Ranking,
                   timings: Timings) -> list[Ranked]:
        started = time.perf_counter()
        n = self.c.n

        def shard_queries(s: int, queries: Sequence[Query]) -> list[Query]:  # each shard excludes its own ids
            return [replace(q, exclude=split_ids(q.exclude, n).get(s, [])) for q in queries]

        if ranking.retriever == "hybrid":  # the caption words scaled by the collection's best, as in one collection
            bests = self.c._call(_words_best, {s: (shard_queries(s, queries), kind, self.path, self.where,
                                                   ranking.rerank > 0) for s in range(n)}, self.missing)
            queries = [replace(q, words_best=max((b[i] for b in bests.values()), default=0.0))
                       for i, q in enumerate(queries)]
        args = {s: (shard_queries(s, queries), fetch, kind, self.path, self.where, ranking)
                for s in range(n) if s not in self.missing}  # a shard late once is not waited for twice
        answers = self.c._call(_candidates, args, self.missing)
        for s, (_, videos, items) in answers.items():
            self._videos.update({i * n + s: video for i, video in videos.items()})
            self._items.update({i * n + s: global_item(item, s, n) for i, item in items.items()})
        out = [merge({s: lists[i] for s, (lists, _, _) in answers.items()}, n, fetch) for i in range(len(queries))]
        timings.add("retrieve", started)
        return out

    def reranker(self, kind: str) -> tuple[pipeline.Scorer, float] | None:
        """The collection's reranker, reading the candidates' stored tokens and texts from their shards: it
        scores the merged top N together, as one collection does (the int8 reranker's scores depend on the batch)."""
        return self.c.reranker(kind, self)

    def groups(self, kind: str, ids: np.ndarray) -> dict[int, str]:
        """The video of each candidate that is a moment (the collapse stage), as the shards sent them with it."""
        return {int(i): self._videos[int(i)] for i in ids if int(i) in self._videos}

    def vectors(self, kind: str, ids: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), self.c.manifest.dim), np.float32)  # a shard gone since: no similarity to others
        groups = split_ids(ids, self.c.n)
        found = self.c._call(_method, {s: ("vectors", kind, local) for s, local in groups.items()}, self.missing)
        return scatter(ids, self.c.n, found, out)

    def get(self, ids: Iterable[int]) -> dict[int, Item]:
        """Stored items by id (hits, the reranker's candidate texts): those the shards sent with the candidates,
        else read from their shards."""
        ids = [int(i) for i in ids]
        if rest := [i for i in ids if i not in self._items]:
            self._items.update(self.c.store.get(rest, self.missing))
        return {i: self._items[i] for i in ids if i in self._items}

    def tokens(self, ids: np.ndarray) -> np.ndarray | None:
        """The reranker tokens of candidate photos, read from their shards (None when a shard is late)."""
        return self.c.store.tokens(ids, self.missing)


class ShardedStore:
    """The read side of an ``ItemStore`` over every shard, in global ids (the server and the CLI read through it)."""

    def __init__(self, collection: ShardedCollection) -> None:
        self.c = collection
        self.bank = None

    def _each(self, method: str, *args: Any) -> dict[int, Any]:
        return self.c._call(_store, everywhere(self.c.n, method, *args))

    def _listed(self, method: str, *args: Any) -> list[Item]:
        """The items a store method lists in each shard, under their global ids, shard by shard."""
        return [global_item(i, s, self.c.n) for s, items in sorted(self._each(method, *args).items()) for i in items]

    @property
    def generation(self) -> int:
        """Grows whenever any shard changes (each shard's generation only grows)."""
        return sum(self.c._call(_generation, everywhere(self.c.n)).values())

    def count(self, kind: str | None = None) -> int:
        return sum(self._each("count", kind).values())

    def get(self, ids: Iterable[int], missing: set[int] | None = None) -> dict[int, Item]:
        found = self.c._call(_store, {s: ("get", local) for s, local in split_ids(ids, self.c.n).items()}, missing)
        return {i.id * self.c.n + s: global_item(i, s, self.c.n) for s, items in found.items() for i in items.values()}

    def tokens(self, ids: np.ndarray, missing: set[int] | None = None) -> np.ndarray | None:
        """The stored reranker tokens of photos by id, or None when any of them has none (or its shard is late)."""
        groups = split_ids(ids, self.c.n)
        found = self.c._call(_store, {s: ("tokens", local) for s, local in groups.items()}, missing)
        if len(found) < len(groups) or any(t is None for t in found.values()):
            return None
        first = next(iter(found.values()))
        return scatter(ids, self.c.n, found, np.empty((len(ids), *first.shape[1:]), first.dtype))

    def vector(self, item_id: int) -> np.ndarray:
        s = int(item_id) % self.c.n
        return self.c._call(_store, {s: ("vector", int(item_id) // self.c.n)})[s]

    def by_hash(self, hash_: str, kind: str) -> list[Item]:
        return self._listed("by_hash", hash_, kind)

    def image_by_path(self, path: str) -> Item | None:
        s = shard_of(path, self.c.n)
        item = self.c._call(_store, {s: ("image_by_path", path)})[s]
        return None if item is None else global_item(item, s, self.c.n)

    def select(self, where: str = "1", params: Sequence[Any] = ()) -> list[Item]:
        return self._listed("select", where, params)

    def field_names(self) -> set[str]:
        return set().union(*self._each("field_names").values())

    def failures(self) -> list[tuple[str, str]]:
        return [f for _, found in sorted(self._each("failures").items()) for f in found]

