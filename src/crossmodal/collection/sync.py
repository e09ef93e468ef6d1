"""Bringing a collection up to date with photos on disk and captions in files.

Unchanged files (same size and mtime) are skipped without reading them, so a second run over a
large folder takes seconds and an interrupted run resumes where it stopped. Changed files are
hashed: a touched file keeps its vector, a renamed file keeps its id and vector, a duplicate reuses
the vector, and only new content is decoded and encoded. Each batch is one transaction. Deleted
files are dropped only after a complete scan, so an interrupted run never removes anything; a folder
with no photos at all (an unmounted disk) keeps its stored photos unless told otherwise, and a pruned
photo that comes back takes its old id and fields again (pruned.py).
Photos are read, hashed, decoded and made ready for the model by worker threads ahead of it (``prefetch``), or
read, decoded and encoded by a pool of Ray actors (distributed/encode_pool.py); either way this process alone
writes the store.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..encoders.base import Encoder
from ..sources.captions import CaptionRecord
from ..sources.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from ..sources.metadata import read_metadata
from ..sources.prefetch import batches, prefetch
from ..sources.videos import is_video_path
from . import photo_fields, pruned
from .moments import is_moment
from .paths import encode_path, shown
from .store import Item, ItemStore, NewItem

if TYPE_CHECKING:
    from ..distributed.encode_pool import EncodePool
    from ..rerank.runtime import Reranker

Reporter = Callable[[str], None]


@dataclass
class IndexReport:
    """What one index run did; ``failed`` holds (path, reason) for each unusable file."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    reused: int = 0
    restored: int = 0
    removed: int = 0
    kept: int = 0
    reencoded: int = 0  # stored items encoded again, their content unchanged (sync.refresh_captions)
    skipped_known_bad: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def seen(self) -> int:
        """How many files the run found: stored, unchanged, moved, re-used, restored or unreadable."""
        return (self.added + self.updated + self.unchanged + self.moved + self.reused + self.restored
                + len(self.failed) + self.skipped_known_bad)

    def summary(self) -> str:
        parts = [f"{self.added} added", f"{self.updated} updated", f"{self.unchanged} unchanged"]
        for name in ("moved", "reused", "restored", "removed", "kept", "reencoded"):
            if getattr(self, name):
                parts.append(f"{getattr(self, name)} {name.replace('reencoded', 're-encoded')}")
        if self.failed:
            parts.append(f"{len(self.failed)} unreadable")
        if self.skipped_known_bad:
            parts.append(f"{self.skipped_known_bad} known unreadable (unchanged since last run)")
        return ", ".join(parts)

    def merge(self, other: IndexReport) -> IndexReport:
        """The counts of two runs added up (a folder's photos and videos; the shards of a sharded collection)."""
        return IndexReport(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(IndexReport)})


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def text_hash(text: str) -> str:
    return content_hash(text.encode("utf-8"))


def _warn(message: str) -> None:
    tqdm.write(message)


@dataclass
class _Pending:
    path: str
    stat: os.stat_result
    item: Item | None


@dataclass
class _Loaded:
    """A pending photo after the worker's part: its hash, what its header says (``meta``, metadata.py), and
    the decoded photo made ready for the model (``Encoder.prepare_image``) unless its content is already
    stored or it failed (``error`` says why); a pool's worker encodes it too (``vector``, reranker ``tokens`` and
    likeliest ``words``)."""

    entry: _Pending
    digest: str | None = None
    image: Any = None
    error: str | None = None
    meta: dict[str, Any] | None = None
    vector: np.ndarray | None = None
    tokens: np.ndarray | None = None
    words: np.ndarray | None = None


def _load(entry: _Pending, known: frozenset[str], max_pixels: int, prepare: Callable[[Image.Image], Any]
          ) -> _Loaded:
    """Read, hash and (for new content) decode and prepare one photo; runs in a worker thread, touches no
    database. A photo the model's preprocessing fails on is reported like an undecodable one."""
    try:
        with open(entry.path, "rb") as f:
            data = f.read()
    except OSError as e:
        return _Loaded(entry, error=f"cannot read: {e.strerror or e}")
    digest = content_hash(data)
    meta = read_metadata(data)
    if digest in known:
        return _Loaded(entry, digest, meta=meta)
    try:
        return _Loaded(entry, digest, image=prepare(load_image(data, max_pixels=max_pixels)), meta=meta)
    except ImageError as e:
        return _Loaded(entry, digest, error=str(e))
    except Exception as e:  # one bad photo must not stop the run
        return _Loaded(entry, digest, error=f"cannot prepare for the model: {e}")


def stat_or_report(path: str, result: IndexReport, report: Reporter) -> os.stat_result | None:
    """A file's stat, or None when it cannot be read (counted as failed and reported once)."""
    try:
        return os.stat(path)
    except OSError as e:
        result.failed.append((path, e.strerror or str(e)))
        report(f"skipped {shown(path)}: {e.strerror or e}")
        return None


def index_images(
    store: ItemStore,
    encoder: Encoder,
    paths: Iterable[str | Path],
    *,
    root: str | None = None,
    fields: dict[str, Any] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch_size: int | None = None,
    prune: bool = True,
    prune_all: bool = False,
    progress: bool = True,
    report: Reporter = _warn,
    workers: int | None = None,
    pool: EncodePool | None = None,
) -> IndexReport:
    """Add new photos, re-embed changed ones and, when ``root`` is given and ``prune`` is set, drop
    stored photos below ``root`` that no longer exist. When no photo at all is left below ``root`` (an
    unmounted or emptied folder) its stored photos are kept, and reported, unless ``prune_all`` is set.
    ``workers`` decoding threads run ahead of the model (default: one per core; 0 decodes in this thread);
    with a ``pool`` its Ray actors read, decode and encode the photos instead."""
    result = IndexReport()
    fields = dict(fields or {})
    files = [os.path.abspath(p) for p in paths]
    if root is not None:
        root = os.path.abspath(root)
        known = {p: it for p, it in store.images_under(root).items() if not is_moment(it)}  # videos: video_sync.py
        known_bad = {p: v for p, v in store.failures_under(root).items() if not is_video_path(p)}
    else:
        known = {p: it for p in files if (it := store.image_by_path(p)) is not None}
        known_bad = {}
    todo: list[_Pending] = []
    refields: list[Item] = []
    for path in files:
        if (st := stat_or_report(path, result, report)) is None:
            continue
        item = known.get(path)
        if item is not None and item.size == st.st_size and item.mtime == st.st_mtime:
            result.unchanged += 1
            if any(item.fields.get(k) != v for k, v in fields.items()):
                refields.append(item)
        elif item is None and known_bad.get(path) == (st.st_size, st.st_mtime):
            result.skipped_known_bad += 1
        else:
            todo.append(_Pending(path, st, item))
    if refields:
        with store.transaction() as db:
            for item in refields:
                db.execute("UPDATE items SET fields = ? WHERE id = ?",
                           (json.dumps({**item.fields, **fields}), item.id))

    claimed: set[int] = set()  # ids taken this run by a moved or returning photo
    returning = pruned.recall(store.db)
    size = batch_size or encoder.batch_size
    stored = store.hashes("image")
    if pool is None:
        reload = partial(_load, known=frozenset(), max_pixels=max_pixels, prepare=encoder.prepare_image)
        loaded = prefetch(partial(reload, known=stored), todo, window=2 * size, workers=workers)
    else:
        pool.check(encoder)
        reload = partial(pool.load_one, max_pixels=max_pixels, reranker=store.reranker)
        loaded = pool.load(todo, stored, max_pixels, store.reranker, size)
    bar = tqdm(total=len(todo), unit="photo", desc="indexing", disable=not progress or not todo)
    for batch in batches(loaded, size):
        _index_batch(store, encoder, batch, fields, reload, result, claimed, returning, report)
        bar.update(len(batch))
    bar.close()

    if root is not None and prune:
        present = set(files)
        gone = [it for p, it in known.items() if p not in present and it.id not in claimed]
        stale_bad = [p for p in known_bad if p not in present]
        if gone and not files and not prune_all:
            result.kept = len(gone)
            report(f"kept the {len(gone)} stored photos below {shown(root)}: no photo is there now (an unmounted "
                   "or emptied folder?); index it with --prune-all (prune_all=True) to remove them")
            gone, stale_bad = [], []
        if gone or stale_bad:
            with store.transaction() as db:
                pruned.remember(db, gone)
                result.removed = store.delete(db, [it.id for it in gone])
                store.clear_failures(db, stale_bad)
    return result


def _index_batch(store: ItemStore, encoder: Encoder, batch: list[_Loaded], fields: dict[str, Any],
                 reload: Callable[[_Pending], _Loaded], result: IndexReport, claimed: set[int],
                 returning: dict[str, list[pruned.Pruned]], report: Reporter) -> None:
    """Sort out one batch of loaded photos, encode the new ones (unless a pool did) and write it all in one
    transaction; ``reload`` loads a photo again, in full, whose content was stored when the run began."""
    back: dict[str, pruned.Pruned] = {}  # path -> the pruned photo a new file is
    writes: list[NewItem] = []
    moves: list[tuple[int, _Pending]] = []
    failures: list[tuple[_Pending, str]] = []
    to_encode: list[tuple[_Pending, str, Any]] = []
    read = {b.entry.item.hash for b in batch if b.entry.item is not None} | {b.digest for b in batch if b.digest}
    file_fields = photo_fields.stored(store.db, read)
    metas = {b.digest: b.meta for b in batch if b.digest and b.meta is not None}
    for loaded in batch:
        entry, digest = loaded.entry, loaded.digest
        if digest is None:
            failures.append((entry, loaded.error or "cannot read"))
            continue
        item = entry.item
        if item is not None and item.hash == digest:  # touched, not changed
            own = photo_fields.merged(item.fields, file_fields.get(item.hash), loaded.meta)
            writes.append(_image_item(entry, digest, store.vector(item.id), {**own, **fields}, item.id))
            result.unchanged += 1
            continue
        twins = [t for t in store.by_hash(digest, "image") if t.path != entry.path]
        vanished = [t for t in twins if t.id not in claimed and not os.path.exists(t.path)]
        if item is None and vanished:  # renamed or moved: keep its id and vector
            moves.append((vanished[0].id, entry))
            claimed.add(vanished[0].id)
            continue
        if item is None and (old := pruned.pick(returning.get(digest, []), entry.path, claimed)) is not None:
            back[entry.path] = old  # pruned earlier, back now: its old id and fields
            claimed.add(old.id)
        if twins:  # a duplicate of stored content: reuse the vector
            own = _fields(entry, back, fields, file_fields, loaded.meta)
            writes.append(_image_item(entry, digest, store.vector(twins[0].id), own, item.id if item else None))
            _count(result, entry, back, "reused")
            continue
        if loaded.image is None and loaded.vector is None and loaded.error is None:  # its stored twin is gone
            loaded = reload(entry)
        if loaded.error is not None:
            failures.append((entry, loaded.error))
            continue
        to_encode.append((entry, digest, loaded))
    encode_loaded(store.reranker, encoder, [loaded for _, _, loaded in to_encode])
    for entry, digest, loaded in to_encode:
        item = entry.item
        writes.append(_image_item(entry, digest, loaded.vector, _fields(entry, back, fields, file_fields, loaded.meta),
                                  item.id if item else None))
        _count(result, entry, back, "added" if item is None else "updated")
    for entry, reason in failures:
        report(f"skipped {shown(entry.path)}: {reason}")
        result.failed.append((entry.path, reason))
    store.with_biases(writes)
    with store.transaction() as db:
        for digest, meta in metas.items():
            photo_fields.remember(db, digest, meta)
        for new in writes:
            new_id = store.put(db, new)
            if new.id is None and new.path in back:
                pruned.restore(db, new_id, back[new.path])
        for _, digest, loaded in to_encode:
            if loaded.tokens is not None:
                store.put_tokens(db, digest, loaded.tokens, loaded.words)
        for item_id, entry in moves:
            store.move(db, item_id, entry.path, entry.stat.st_size, entry.stat.st_mtime)
            result.moved += 1
        for entry, reason in failures:
            if entry.item is not None:  # a stored photo that became unreadable: drop its stale vector
                store.delete(db, [entry.item.id])
            store.record_failure(db, entry.path, entry.stat.st_size, entry.stat.st_mtime, reason)
        store.clear_failures(db, [w.path for w in writes] + [e.path for _, e in moves])


def _fields(entry: _Pending, back: dict[str, pruned.Pruned], fields: dict[str, Any],
            file_fields: dict[str, dict[str, Any]], meta: dict[str, Any] | None) -> dict[str, Any]:
    """The fields a photo is stored with: what its file says (``meta``), then its stored (or, returning, its
    pruned) fields less what its old content's file said (photo_fields.py), then this run's."""
    if entry.item is not None:
        old, said = entry.item.fields, file_fields.get(entry.item.hash)
    else:
        old, said = (back[entry.path].fields, meta) if entry.path in back else ({}, None)
    return {**photo_fields.merged(old, said, meta), **fields}


def _count(result: IndexReport, entry: _Pending, back: dict[str, pruned.Pruned], outcome: str) -> None:
    """Count a stored photo under ``outcome``, or as restored when it is a pruned photo come back."""
    name = "restored" if entry.path in back else outcome
    setattr(result, name, getattr(result, name) + 1)


def encode_photos(reranker: Reranker | None, encoder: Encoder, prepared: list[Any]
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Vectors of prepared photos and, when the collection has a ``reranker``, its tokens of each and (with a
    word classifier) each one's likeliest words, from the same model call: both read the photo tower's spatial
    features; an encoder that cannot give them stores none."""
    if reranker is None or not encoder.rerank_inputs:
        return encoder.encode_prepared(prepared), None, None
    vectors, grids = encoder.encode_prepared_grids(prepared)
    return vectors, reranker.photo_tokens(grids), reranker.photo_records(grids)


def encode_loaded(reranker: Reranker | None, encoder: Encoder, photos: list[_Loaded]) -> None:
    """Give each decoded photo that has no vector yet its vector, reranker tokens and words, in one model call, and drop
    its decoded pixels (a pool's worker sends back only what is stored)."""
    todo = [p for p in photos if p.vector is None and p.image is not None]
    if not todo:
        return
    vectors, tokens, words = encode_photos(reranker, encoder, [p.image for p in todo])
    for i, p in enumerate(todo):
        p.vector, p.image = vectors[i], None
        p.tokens, p.words = None if tokens is None else tokens[i], None if words is None else words[i]


def fill_tokens(store: ItemStore, encoder: Encoder, max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True,
                report: Reporter = _warn) -> int:
    """Compute the reranker tokens (and words) of stored photos that lack them (indexed before the reranker existed),
    reading each photo again; returns how many were added. Unreadable photos are reported and left as they are."""
    missing = ({it.hash: it for it in store.missing_tokens() if it.path and not is_moment(it)}
               if encoder.rerank_inputs else {})  # a video's moments get theirs when it is (re-)indexed
    if not missing:
        return 0
    todo = []
    for item in missing.values():
        try:
            todo.append(_Pending(item.path, os.stat(item.path), item))
        except OSError as e:
            report(f"no reranker features for {shown(item.path)}: {e.strerror or e}")
    loaded = prefetch(lambda entry: _load(entry, frozenset(), max_pixels, encoder.prepare_image), todo,
                      window=2 * encoder.batch_size)
    done = 0
    bar = tqdm(total=len(todo), unit="photo", desc="reranker features", disable=not progress)
    for batch in batches(loaded, encoder.batch_size):
        good = [b for b in batch if b.image is not None and b.digest == b.entry.item.hash]
        for b in batch:
            if b not in good:
                report(f"no reranker features for {shown(b.entry.path)}: {b.error or 'changed since indexed'}")
        if good:
            _, tokens, words = encode_photos(store.reranker, encoder, [b.image for b in good])
            with store.transaction() as db:
                for i, b in enumerate(good):
                    store.put_tokens(db, b.digest, tokens[i], None if words is None else words[i])
            done += len(good)
        bar.update(len(batch))
    bar.close()
    return done


def fill_metadata(store: ItemStore, progress: bool = True, batch: int = 512) -> int:
    """Read the metadata of stored photos that the current reader has not read (stored before it existed),
    from each file's header, and merge it into their fields; returns how many photos were read. Nothing is
    encoded again; a file gone or changed since it was indexed is left for the run that re-indexes it."""
    if not photo_fields.exists(store.db):
        store.db.execute(photo_fields.SCHEMA)  # one atomic statement, outside the snapshot: no new generation
    items = store.select(photo_fields.missing_sql())
    todo = [it for it in items if it.path and not is_moment(it) and _unchanged(it)]
    by_hash: dict[str, list[Item]] = {}
    for it in todo:
        by_hash.setdefault(it.hash, []).append(it)
    first = [group[0] for group in by_hash.values()]
    metas = prefetch(lambda it: (it.hash, read_metadata(it.path)), first, window=64)
    done = 0
    bar = tqdm(total=len(first), unit="photo", desc="photo metadata", disable=not progress or not first)
    for chunk in batches(metas, batch):
        said = photo_fields.stored(store.db, {h for h, _ in chunk})
        with store.transaction() as db:
            for hash_, meta in chunk:
                photo_fields.remember(db, hash_, meta)
                for it in by_hash[hash_]:
                    fields = photo_fields.merged(it.fields, said.get(hash_), meta)
                    if fields != it.fields:
                        db.execute("UPDATE items SET fields = ? WHERE id = ?", (json.dumps(fields), it.id))
        done += len(chunk)
        bar.update(len(chunk))
    bar.close()
    return done


def _unchanged(item: Item) -> bool:
    """Is the photo's file still the one that was indexed (same size and mtime)?"""
    try:
        st = os.stat(item.path)
    except OSError:
        return False
    return st.st_size == item.size and st.st_mtime == item.mtime


def _image_item(entry: _Pending, digest: str, vector: Any, fields: dict[str, Any], item_id: int | None) -> NewItem:
    return NewItem(kind="image", vector=vector, hash=digest, path=entry.path, size=entry.stat.st_size,
                   mtime=entry.stat.st_mtime, fields=fields, id=item_id)


def refresh_captions(store: ItemStore, encoder: Encoder, batch: int = 256, progress: bool = True,
                     report: Reporter = _warn) -> int:
    """Encode again the stored captions that ``encoder`` now encodes another way (``Encoder.caption_recipe``:
    since captions are read by both of lite's text towers, a collection indexed before gets them on its next
    caption file index, not on an upload of a few texts); returns how many. Each batch is one transaction; the
    recipe is recorded after the last, so an interrupted run leaves captions that answer (some encoded each way)
    and is done again by the next index."""
    recipe = encoder.caption_recipe
    if not recipe or store.recorded("captions") == recipe:
        return 0
    ids = store.ids_where("kind = 'text'")
    if len(ids):
        report(f"encoding the {len(ids)} stored captions again, as this model now stores captions (once)")
    for start in tqdm(range(0, len(ids), batch), unit="batch", desc="captions", disable=not progress or not len(ids)):
        chunk = ids[start:start + batch]
        items = store.get(chunk)
        store.replace_vectors("text", chunk, encoder.encode_captions([items[int(i)].text or "" for i in chunk]))
    store.record("captions", recipe)
    return len(ids)


def index_texts(
    store: ItemStore,
    encoder: Encoder,
    records: list[CaptionRecord],
    *,
    source: str | None = None,
    prune: bool = True,
    batch_size: int = 256,
    progress: bool = True,
) -> IndexReport:
    """Store texts. With a ``source`` (a caption file), re-indexing it adds new captions and drops
    captions no longer in it; identical texts reuse their stored vector."""
    result = IndexReport()
    existing = store.select("kind = 'text' AND path IS ?", (encode_path(source),)) if source is not None else []
    available = Counter(_text_key(it.text or "", it.fields) for it in existing)
    new: list[CaptionRecord] = []
    for rec in records:
        key = _text_key(rec.text, rec.fields)
        if available[key] > 0:
            available[key] -= 1
            result.unchanged += 1
        else:
            new.append(rec)
    bar = tqdm(total=len(new), unit="text", desc="indexing texts", disable=not progress or not new)
    for start in range(0, len(new), batch_size):
        batch = new[start:start + batch_size]
        hashes = [text_hash(r.text) for r in batch]
        reuse = {h: store.by_hash(h, "text") for h in set(hashes)}
        need = sorted({r.text for r, h in zip(batch, hashes, strict=True) if not reuse[h]})
        encoded = dict(zip(need, encoder.encode_captions(need), strict=True)) if need else {}
        writes = store.with_biases([
            NewItem(kind="text", vector=store.vector(reuse[h][0].id) if reuse[h] else encoded[rec.text], hash=h,
                    path=source, text=rec.text, fields=rec.fields)
            for rec, h in zip(batch, hashes, strict=True)])
        with store.transaction() as db:
            for item in writes:
                store.put(db, item)
                result.added += 1
        bar.update(len(batch))
    bar.close()
    if source is not None and prune:
        stale = []
        for it in existing:
            key = _text_key(it.text or "", it.fields)
            if available[key] > 0:
                available[key] -= 1
                stale.append(it.id)
        if stale:
            with store.transaction() as db:
                result.removed = store.delete(db, stale)
    return result


def _text_key(text: str, fields: dict[str, Any]) -> str:
    return text + "\0" + json.dumps(dict(sorted(fields.items())))
