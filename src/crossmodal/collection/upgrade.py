"""Encoding a collection again with another version of its model (``crossmodal upgrade``), without losing it.

Every stored photo is read again (a video's moments: their frames) and every caption encoded again. The new rows
go to new vector files, fsynced, and the progress is recorded as it goes, so an interrupted run resumes where it
stopped. Then one transaction points every item at its new row and records the new model. Until that commit the
collection answers with the old model; after it, with the new one. The manifest is written after the commit; a
crash in between is mended on the next open (``Collection``), which trusts the store.

A photo that cannot be read (a disk not mounted, a file gone or changed) stops the run before the commit, with
the collection unchanged: an unmounted disk is not a deletion. ``drop_unreadable`` leaves such items out instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from ..encoders.base import Encoder
from ..sources.images import DEFAULT_MAX_PIXELS, ImageError
from ..sources.prefetch import batches, prefetch
from ..sources.videos import frame_at
from .atomic import fsync_dir
from .moments import is_moment
from .paths import shown
from .store import KINDS, Item, ItemStore
from .sync import _load, _Pending, encode_photos

PLAN = "upgrade"  # the meta key of a run in progress: its items, files (named for the target model), rows done, failed
MODEL_KEY = "model"  # the meta keys of the model the vectors are from, once a collection was upgraded
FINGERPRINT_KEY = "fingerprint"
CHUNK = 256  # items encoded between two progress records


class UnreadableError(RuntimeError):
    """Some stored photos could not be read again; nothing was changed."""


@dataclass
class UpgradeReport:
    """What an upgrade did: items encoded again per kind, items left out (``dropped``), each failure's reason."""

    encoded: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _digest(ids: np.ndarray) -> str:
    return hashlib.blake2b(ids.astype(np.int64).tobytes(), digest_size=8).hexdigest()


def _plan(store: ItemStore, encoder: Encoder, ids: dict[str, np.ndarray]) -> dict[str, Any]:
    """The recorded run to resume when it is for this model and these items and its files are there, else a fresh
    one. Its files are named ``*.part``: the vector files' clean-up (``VectorFiles.remove_others``) leaves them
    alone, so a search between two runs keeps the work; those of a run given up are removed."""
    digests = {kind: _digest(ids[kind]) for kind in KINDS}
    plan = json.loads(store.recorded(PLAN) or "{}")
    files = {kind: f"{kind}.upgrade-{encoder.fingerprint}.part" for kind in KINDS}  # name the target model
    if plan.get("ids") != digests or plan.get("files") != files:
        plan = {"ids": digests, "files": files, "done": {}, "failed": {}}
    store.files.folder.mkdir(exist_ok=True)
    for kind in KINDS:
        if not (store.files.folder / files[kind]).is_file():
            plan["done"][kind], plan["failed"][kind] = 0, []
            (store.files.folder / files[kind]).touch()  # a kind with no items switches to an empty file
    for stale in store.files.folder.glob("*.part"):
        if stale.name not in files.values():
            stale.unlink()
    store.record(PLAN, json.dumps(plan))
    return plan


def _photo(item: Item, max_pixels: int, prepare: Callable[[Any], Any]) -> tuple[Any, str | None]:
    """A stored photo (or a moment's frame) made ready for the model, or (None, why not)."""
    if is_moment(item):
        try:
            return prepare(frame_at(item.fields["video"], float(item.fields["t"]))), None
        except (ImageError, OSError) as e:
            return None, str(e)
    try:
        loaded = _load(_Pending(item.path or "", os.stat(item.path or ""), item), frozenset(), max_pixels, prepare)
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}"
    if loaded.error:
        return None, loaded.error
    if loaded.digest != item.hash:
        return None, "changed since it was indexed"
    return loaded.image, None


def _encode_chunk(store: ItemStore, encoder: Encoder, kind: str, items: list[Item], max_pixels: int
                  ) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Rows ``[vector, 0]`` of ``items`` (zeros for a photo that failed, listed by position with its reason);
    photos' reranker tokens are stored on the way (keyed by content, they do not touch the vectors)."""
    rows = np.zeros((len(items), store.dim + 1), np.float32)
    if kind == "text":
        rows[:, :-1] = encoder.encode_captions([it.text or "" for it in items])
        return rows, []
    read = list(prefetch(lambda it: _photo(it, max_pixels, encoder.prepare_image), items, window=len(items)))
    good = [i for i, (image, _) in enumerate(read) if image is not None]
    failed = [(i, why) for i, (image, why) in enumerate(read) if image is None]
    for start in range(0, len(good), encoder.batch_size):
        part = good[start:start + encoder.batch_size]
        vectors, tokens, words = encode_photos(store.reranker, encoder, [read[i][0] for i in part])
        rows[part, :-1] = vectors
        if tokens is not None:
            with store.transaction() as db:
                for j, i in enumerate(part):
                    store.put_tokens(db, items[i].hash, tokens[j], None if words is None else words[j])
    return rows, [(i, why or "unreadable") for i, why in failed]


def upgrade(store: ItemStore, encoder: Encoder, *, drop_unreadable: bool = False,
            max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True,
            report: Callable[[str], None] = tqdm.write) -> UpgradeReport:
    """Encode every item of ``store`` again with ``encoder`` and switch the store over to it in one transaction
    (module docstring). Raises UnreadableError, with the store unchanged and the run resumable, when photos could
    not be read and ``drop_unreadable`` is off. The caller writes the manifest and refreshes biases and indexes."""
    ids = {kind: np.sort(store.ids_where("kind = ?", (kind,))) for kind in KINDS}
    plan = _plan(store, encoder, ids)
    result = UpgradeReport()
    bar = tqdm(total=sum(len(v) for v in ids.values()), unit="item", desc="encoding again", disable=not progress)
    for kind in KINDS:
        name, done = plan["files"][kind], plan["done"][kind]
        retry, plan["failed"][kind] = plan["failed"][kind], []
        positions = [*retry, *range(done, len(ids[kind]))]
        bar.update(len(ids[kind]) - len(positions))
        for chunk in batches(positions, CHUNK):
            items = store.get(ids[kind][chunk])
            rows, failed = _encode_chunk(store, encoder, kind, [items[int(i)] for i in ids[kind][chunk]], max_pixels)
            runs = np.split(np.arange(len(chunk)), np.flatnonzero(np.diff(chunk) != 1) + 1)
            for run in runs:  # retried rows sit apart; new ones follow each other
                store.files.append(name, chunk[run[0]], rows[run])
            for i, why in failed:
                plan["failed"][kind].append(chunk[i])
                result.failed.append((shown(items[int(ids[kind][chunk[i]])].path or ""), why))
                report(f"cannot encode {result.failed[-1][0]} again: {why}")
            plan["done"][kind] = max(plan["done"][kind], chunk[-1] + 1)
            store.record(PLAN, json.dumps(plan))
            bar.update(len(chunk))
        result.encoded[kind] = len(ids[kind]) - len(plan["failed"][kind])
    bar.close()
    unreadable = {kind: ids[kind][plan["failed"][kind]] for kind in KINDS}
    if any(len(v) for v in unreadable.values()) and not drop_unreadable:
        count = sum(len(v) for v in unreadable.values())
        raise UnreadableError(f"{count} stored photos could not be read again (listed above); nothing was changed "
                              "and the collection still answers with its old model. Make them readable and run "
                              "again (what was encoded is kept), or run with --drop-unreadable to leave them out")
    _switch(store, encoder, ids, plan, unreadable)
    result.dropped = sum(len(v) for v in unreadable.values())
    return result


def _switch(store: ItemStore, encoder: Encoder, ids: dict[str, np.ndarray], plan: dict[str, Any],
            unreadable: dict[str, np.ndarray]) -> None:
    """One transaction: every item at its new row (no bias yet: they are the new bank's to compute), the new
    vector files, the new model, the unreadable items gone."""
    final = {kind: store.files.new_name(kind, store.generation) for kind in KINDS}
    for kind in KINDS:  # a crash from here to the commit costs the work (the next run starts over), not the data
        os.replace(store.files.folder / plan["files"][kind], store.files.folder / final[kind])
    fsync_dir(store.files.folder)
    with store.transaction() as db:
        for kind in KINDS:
            db.executemany("UPDATE items SET vector_row = ?, bias = NULL, seq = ? WHERE id = ?",
                           [(row, store._writing, int(i)) for row, i in enumerate(ids[kind].tolist())])
            store.set_vector_file(db, kind, final[kind], len(ids[kind]))
            store.delete(db, unreadable[kind])
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       [(MODEL_KEY, encoder.name), (FINGERPRINT_KEY, encoder.fingerprint)]
                       + ([("captions", encoder.caption_recipe)] if encoder.caption_recipe else []))
        db.execute("DELETE FROM meta WHERE key IN (?, 'bank')", (PLAN,))
