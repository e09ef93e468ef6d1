"""Moments of videos as stored items: how they are named, found and told apart from photos.

A moment is an item of kind ``image`` (so vector files, indexes, biases, filters and the reranker treat it as
the frame it is) whose path is its video's path with a media-fragment time, ``/videos/a.mp4#t=12.000`` (unique
per moment, and every moment of a video sorts together under its path), and whose fields say ``video`` (the
file), ``t``, ``start`` and ``end`` (seconds). Its size and mtime are its video's, and its hash is the video's
content hash followed by ``:`` and the time, so a renamed video is found by content and copies are found alike.
Searching ``kind="video"`` is searching images restricted to moments.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..search.filters import Condition
from .paths import encode_path
from .store import Item, ItemStore

VIDEO = "video"  # the search kind that means "moments of videos only"
KEYS = ("video", "t", "start", "end")  # the fields a moment is stored with
MARK = "#t="


def moment_path(video: str, t: float) -> str:
    """The stored path of the moment of ``video`` at ``t`` seconds."""
    return f"{video}{MARK}{t:.3f}"


def moment_hash(digest: str, t: float) -> str:
    """The stored hash of a moment: its video's content hash and its time."""
    return f"{digest}:{t:.3f}"


def video_digest(item: Item) -> str:
    """The content hash of the video a stored moment comes from."""
    return item.hash.split(":", 1)[0]


def is_moment(item: Item) -> bool:
    """Whether a stored item is a moment of a video (not a photo)."""
    video = item.fields.get("video")
    return item.kind == "image" and isinstance(video, str) and (item.path or "").startswith(video + MARK)


def by_video(items: Iterable[Item]) -> dict[str, list[Item]]:
    """Moments among ``items`` by their video's path, each video's in time order."""
    out: dict[str, list[Item]] = {}
    for item in items:
        if is_moment(item):
            out.setdefault(item.fields["video"], []).append(item)
    for moments in out.values():
        moments.sort(key=lambda m: m.fields["t"])
    return out


def of_video(store: ItemStore, video: str) -> list[Item]:
    """The stored moments of one video, in time order (a range on the unique path index)."""
    low, high = encode_path(video + MARK), encode_path(video + "#t>")
    return by_video(store.select("kind = 'image' AND path >= ? AND path < ?", (low, high))).get(video, [])


def of_content(store: ItemStore, digest: str) -> dict[str, list[Item]]:
    """The stored moments of every video with content ``digest``, by video path."""
    return by_video(store.select("kind = 'image' AND hash > ? AND hash < ?", (digest + ":", digest + ";")))


def any_moments(store: ItemStore) -> bool:
    """Whether any moment is stored (a photo-only collection's sync skips the video pass)."""
    return store.db.execute("SELECT 1 FROM items WHERE kind = 'image' AND instr(hash, ':') > 0 LIMIT 1"
                            ).fetchone() is not None


def count_videos(store: ItemStore) -> tuple[int, int]:
    """(videos, their moments) stored (``info``)."""
    videos, count = store.db.execute("SELECT COUNT(DISTINCT json_extract(fields, '$.video')), COUNT(*) FROM items "
                                     "WHERE kind = 'image' AND instr(hash, ':') > 0").fetchone()
    return int(videos), int(count)


def video_digests(store: ItemStore) -> frozenset[str]:
    """The content hashes of every stored video (lets the sync skip decoding a renamed or copied video)."""
    rows = store.db.execute("SELECT DISTINCT substr(hash, 1, instr(hash, ':') - 1) FROM items "
                            "WHERE kind = 'image' AND instr(hash, ':') > 0")
    return frozenset(h for (h,) in rows)


def videos_of(store: ItemStore, ids: Sequence[int]) -> dict[int, str]:
    """The video path of each id that is a moment (for collapsing results to one moment per video)."""
    found = store.get(ids)
    return {i: it.fields["video"] for i, it in found.items() if is_moment(it)}


def search_kind(kind: str, where: Sequence[Any]) -> tuple[str, list[Any]]:
    """A search of ``kind`` as the store runs it: ``video`` is images restricted to moments."""
    if kind != VIDEO:
        return kind, list(where)
    return "image", [*where, Condition("video", "!=", None)]


def hit_place(item: Item) -> tuple[str | None, float | None]:
    """What a search result shows of an item: (path, time) - a moment's video and its time, else its path."""
    if is_moment(item):
        return item.fields["video"], float(item.fields["t"])
    return item.path, None
