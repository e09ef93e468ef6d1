"""Walking a photo folder: every image (and video) file below it, skipping hidden and junk folders."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .images import is_image_path
from .videos import is_video_path

# Folders that hold thumbnails, trash or tool metadata rather than the user's photos.
JUNK_DIRS = frozenset({
    "@eaDir", "__MACOSX", "$RECYCLE.BIN", "System Volume Information", "node_modules", "__pycache__",
    "#recycle", "#snapshot", "lost+found", "Thumbs", ".thumbnails",
})


def iter_images(root: Path, include_hidden: bool = False) -> Iterator[Path]:
    """Yield image files below ``root`` in a stable (sorted) order; ``root`` may also be one file."""
    return _walk(root, include_hidden, is_image_path)


def iter_media(root: Path, include_hidden: bool = False) -> Iterator[Path]:
    """Yield image and video files below ``root`` in a stable (sorted) order (what ``index`` syncs)."""
    return _walk(root, include_hidden, lambda p: is_image_path(p) or is_video_path(p))


def _walk(root: Path, include_hidden: bool, wanted: Callable[[Path], bool]) -> Iterator[Path]:
    """Files below ``root`` (or ``root`` itself) that ``wanted`` accepts, sorted, hidden and junk folders skipped."""
    root = Path(os.path.abspath(os.path.expanduser(root)))
    if root.is_file():
        if wanted(root):
            yield root
        return
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in JUNK_DIRS and (include_hidden or not d.startswith(".")))
        for name in sorted(files):
            if (include_hidden or not name.startswith(".")) and wanted(Path(name)):
                yield Path(folder) / name
