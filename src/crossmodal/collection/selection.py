"""Which stored items a command names (`crossmodal list` and `crossmodal remove`): filtered listings, and
items by id, by path (a file, or a folder for every photo below it) or by a glob on stored paths."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..search.filters import INT64, Condition, where_clause
from .paths import encode_path, under
from .store import Item, ItemStore

GLOB_CHARS = "*?["


def list_items(store: ItemStore, kind: str | None = None, path: str | None = None,
               where: Sequence[Condition] = (), limit: int | None = None) -> list[Item]:
    """Items of ``kind`` (None: all) passing the path glob and conditions, by id, at most ``limit``."""
    sql, params = where_clause(kind, path, list(where))
    if limit is not None:
        return store.select(f"{sql} ORDER BY id LIMIT ?", [*params, limit])
    return store.select(f"{sql} ORDER BY id", params)


def named(store: ItemStore, target: str) -> list[Item]:
    """The items ``target`` names: an id (digits); a glob (``*``, ``?``, ``[``) on stored absolute paths, a
    relative one taken from the current folder; else a path: that photo or caption file (its captions), or
    everything stored below that folder."""
    if target.isdigit():
        return list(store.get([int(target)]).values()) if int(target) <= INT64[1] else []
    if any(c in target for c in GLOB_CHARS):
        pattern = target if target.startswith(("/", "*")) else str(Path(target).expanduser().absolute())
        return list_items(store, path=pattern)
    path = str(Path(target).expanduser().absolute())
    below, params = under("path", path)
    return store.select(f"(path = ? OR {below}) ORDER BY id", [encode_path(path), *params])


def select_targets(store: ItemStore, targets: Sequence[str]) -> list[Item]:
    """Every item the ``targets`` name, once each, by id; a ValueError naming the targets that name nothing
    (a typo must not pass unnoticed next to targets that do name items)."""
    found: dict[int, Item] = {}
    empty = []
    for target in targets:
        items = named(store, target)
        if not items:
            empty.append(target)
        found |= {it.id: it for it in items}
    if empty:
        raise ValueError(f"nothing stored matches {', '.join(map(repr, empty))} (give ids, stored paths or "
                         "folders, or globs such as '*/2019/*')")
    return [found[i] for i in sorted(found)]
