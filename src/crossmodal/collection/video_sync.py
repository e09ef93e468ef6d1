"""Bringing a collection's videos up to date: each video file is one unit of the sync, stored as its moments.

The rules are the photos' (sync.py): an unchanged video (same size and mtime) is not read; a changed one is
hashed, and only new content is decoded (sources/videos.py) and embedded, its moments keeping the ids of the
ones they replace; a touched video keeps its moments; a renamed one keeps ids and vectors; a copy reuses its
twin's vectors; a video that cannot be decoded is reported once and remembered as a failure until it changes,
and one that was stored loses its stale moments. Deleted videos lose their moments only after a complete scan,
and a folder left with no file at all keeps them unless ``prune_all``. The next video is hashed and decoded in
a worker thread while this one is embedded, so one video's frames at most wait in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..encoders.base import Encoder
from ..sources.images import ImageError
from ..sources.prefetch import prefetch
from ..sources.videos import Moment, is_video_path, sample
from . import moments
from .paths import encode_path, shown
from .store import Item, ItemStore, NewItem
from .sync import IndexReport, Reporter, encode_photos, stat_or_report

CHUNK = 1 << 20  # bytes read at a time when hashing a video (memory stays flat for any length)


@dataclass
class _Video:
    """A video to sync and what the worker found: its hash and, for new content, its moments ready for the
    model (``prepared``), or why it cannot be used (``error``)."""

    path: str
    stat: os.stat_result
    stored: list[Item]
    digest: str | None = None
    found: list[Moment] = field(default_factory=list)
    prepared: list[Any] = field(default_factory=list)
    error: str | None = None


def file_hash(path: str) -> str:
    """The content hash of a file (the photos' hash, blake2b-128), read in chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _load(video: _Video, known: frozenset[str], prepare: Callable[[Any], Any]) -> _Video:
    """Hash a video and, unless its content is stored, decode its moments and prepare their frames (a worker
    thread; touches no database)."""
    try:
        video.digest = file_hash(video.path)
    except OSError as e:
        video.error = f"cannot read: {e.strerror or e}"
        return video
    if video.digest in known:
        return video
    try:
        video.found = sample(video.path)
        video.prepared = [prepare(m.image) for m in video.found]
    except ImageError as e:
        video.error = str(e)
    except Exception as e:  # one bad video must not stop the run
        video.error = f"cannot prepare for the model: {e}"
    for m in video.found:
        m.image = None  # the prepared frames are what the model reads; the decoded ones go now
    return video


def index_videos(
    store: ItemStore,
    encoder: Encoder,
    paths: Iterable[str | Path],
    *,
    root: str | None = None,
    fields: dict[str, Any] | None = None,
    prune: bool = True,
    prune_all: bool = False,
    others: int = 0,
    progress: bool = True,
    report: Reporter | None = None,
) -> IndexReport:
    """Sync video files: add new, re-embed changed, keep touched and renamed, and (with ``root`` and ``prune``)
    drop the moments of videos gone from below ``root``; ``others`` is how many other files (photos) the run
    found there, so a folder with photos but no videos left is not mistaken for an unmounted one."""
    report = report or tqdm.write
    result = IndexReport()
    fields = dict(fields or {})
    files = [os.path.abspath(p) for p in paths]
    if root is not None:
        root = os.path.abspath(root)
        known = moments.by_video(store.images_under(root).values())
        known_bad = {p: v for p, v in store.failures_under(root).items() if is_video_path(p)}
    else:
        known = {p: found for p in files if (found := moments.of_video(store, p))}
        known_bad = _failures(store, files)
    todo: list[_Video] = []
    for path in files:
        if (st := stat_or_report(path, result, report)) is None:
            continue
        stored = known.get(path, [])
        if stored and all(m.size == st.st_size and m.mtime == st.st_mtime for m in stored):
            result.unchanged += 1
            _refield(store, stored, fields)
        elif not stored and known_bad.get(path) == (st.st_size, st.st_mtime):
            result.skipped_known_bad += 1
        else:
            todo.append(_Video(path, st, stored))

    claimed: set[str] = set()  # videos whose moments a renamed video took this run
    load = partial(_load, known=moments.video_digests(store), prepare=encoder.prepare_image)
    bar = tqdm(total=len(todo), unit="video", desc="indexing videos", disable=not progress or not todo)
    for video in prefetch(load, todo, window=1, workers=1):
        _sync_one(store, encoder, video, fields, result, claimed, report, load)
        bar.update(1)
    bar.close()

    if root is not None and prune:
        present = set(files)
        gone = [p for p in known if p not in present and p not in claimed]
        stale_bad = [p for p in known_bad if p not in present]
        if gone and not files and not others and not prune_all:
            result.kept = sum(len(known[p]) for p in gone)
            report(f"kept the {len(gone)} stored videos below {shown(root)}: no file is there now (an unmounted or "
                   "emptied folder?); index it with --prune-all (prune_all=True) to remove them")
            gone, stale_bad = [], []
        if gone or stale_bad:
            with store.transaction() as db:
                store.delete(db, [m.id for p in gone for m in known[p]])
                store.clear_failures(db, stale_bad)
            result.removed += len(gone)
    return result


def _sync_one(store: ItemStore, encoder: Encoder, video: _Video, fields: dict[str, Any], result: IndexReport,
              claimed: set[str], report: Reporter, load: Callable[[_Video], _Video]) -> None:
    """Store one loaded video: touched, renamed, a copy, new content, or a failure."""
    if video.digest is not None and video.error is None:
        stored = video.stored
        if stored and all(moments.video_digest(m) == video.digest for m in stored):  # touched, not changed
            _moved(store, stored, video, fields)
            result.unchanged += 1
            return
        twins = {p: ms for p, ms in moments.of_content(store, video.digest).items() if p != video.path}
        vanished = [p for p in twins if p not in claimed and not os.path.exists(p)]
        if not stored and vanished:  # renamed or moved: its moments keep their ids and vectors
            claimed.add(vanished[0])
            _moved(store, twins[vanished[0]], video, fields)
            result.moved += 1
            return
        if twins:  # a copy of a stored video: its moments' vectors are reused
            twin = next(iter(twins.values()))
            times = [(m.fields["t"], m.fields["start"], m.fields["end"]) for m in twin]
            _write(store, video, times, np.stack([store.vector(m.id) for m in twin]), None, None, fields)
            result.reused += 1
            return
        if not video.found and video.error is None:  # its content was stored when the run began, but is gone
            video = load(_Video(video.path, video.stat, video.stored))
    if video.error is not None or video.digest is None:
        reason = video.error or "cannot read"
        report(f"skipped {shown(video.path)}: {reason}")
        result.failed.append((video.path, reason))
        with store.transaction() as db:
            store.delete(db, [m.id for m in video.stored])  # a stored video that became unusable
            store.record_failure(db, video.path, video.stat.st_size, video.stat.st_mtime, reason)
        return
    vectors, tokens, words = _encode(store, encoder, video.prepared)
    _write(store, video, [(m.t, m.start, m.end) for m in video.found], vectors, tokens, words, fields)
    setattr(result, "updated" if video.stored else "added",
            getattr(result, "updated" if video.stored else "added") + 1)


def _encode(store: ItemStore, encoder: Encoder, prepared: list[Any]
            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Vectors (and reranker tokens and words) of a video's prepared frames, in batches of the model's size."""
    parts = [encode_photos(store.reranker, encoder, prepared[start:start + encoder.batch_size])
             for start in range(0, len(prepared), encoder.batch_size)]
    vectors, tokens, words = zip(*parts, strict=True)
    return np.concatenate(vectors), *(None if any(x is None for x in xs) else np.concatenate(xs)
                                      for xs in (tokens, words))


def _own_fields(stored: list[Item], fields: dict[str, Any]) -> dict[str, Any]:
    """The fields a video's moments carry besides their own: the user's stored ones, then this run's."""
    kept = {k: v for k, v in (stored[0].fields if stored else {}).items() if k not in moments.KEYS}
    return {**kept, **fields}


def _write(store: ItemStore, video: _Video, times: list[tuple[float, float, float]], vectors: np.ndarray,
           tokens: np.ndarray | None, words: np.ndarray | None, fields: dict[str, Any]) -> None:
    """Store a video's moments in one transaction, re-using the ids of its stored moments in time order."""
    own = _own_fields(video.stored, fields)
    old = [m.id for m in video.stored]
    writes = store.with_biases([
        NewItem(kind="image", vector=vectors[i], hash=moments.moment_hash(video.digest, t),
                path=moments.moment_path(video.path, t), size=video.stat.st_size, mtime=video.stat.st_mtime,
                fields={**own, "video": video.path, "t": t, "start": start, "end": end},
                id=old[i] if i < len(old) else None)
        for i, (t, start, end) in enumerate(times)])
    with store.transaction() as db:
        for i, new in enumerate(writes):
            store.put(db, new)
            if tokens is not None:
                store.put_tokens(db, new.hash, tokens[i], None if words is None else words[i])
        store.delete(db, old[len(writes):])
        store.clear_failures(db, [video.path])


def _moved(store: ItemStore, stored: list[Item], video: _Video, fields: dict[str, Any]) -> None:
    """Point stored moments at ``video`` (a touched or renamed file): new path, size, mtime; same ids, vectors."""
    own = _own_fields(stored, fields)
    with store.transaction() as db:
        for m in stored:
            t = m.fields["t"]
            store.move(db, m.id, moments.moment_path(video.path, t), video.stat.st_size, video.stat.st_mtime)
            moved = {**own, **{k: m.fields[k] for k in moments.KEYS}, "video": video.path}
            db.execute("UPDATE items SET fields = ? WHERE id = ?", (json.dumps(moved), m.id))
        store.clear_failures(db, [video.path])


def _refield(store: ItemStore, stored: list[Item], fields: dict[str, Any]) -> None:
    """Give an unchanged video's moments this run's fields, when they differ."""
    if fields and any(m.fields.get(k) != v for m in stored for k, v in fields.items()):
        with store.transaction() as db:
            for m in stored:
                db.execute("UPDATE items SET fields = ? WHERE id = ?", (json.dumps({**m.fields, **fields}), m.id))


def _failures(store: ItemStore, files: list[str]) -> dict[str, tuple[int, float]]:
    """The recorded failures (size, mtime) of the given files."""
    out = {}
    for path in files:
        row = store.db.execute("SELECT size, mtime FROM failures WHERE path = ?", (encode_path(path),)).fetchone()
        if row is not None:
            out[path] = (row[0], row[1])
    return out
