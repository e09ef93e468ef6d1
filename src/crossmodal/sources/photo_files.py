"""Reading an indexed photo's file safely: only the regular file that was indexed (same size and mtime,
checked on the open file, so a photo replaced by a symlink, a device or another file is never read), and
its dimensions from the header, without decoding a pixel."""

from __future__ import annotations

import os
import stat
import warnings
from typing import BinaryIO

from PIL import Image

from .images import ImageError

ORIENTATION = 0x0112
TURNED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def open_indexed(path: str, size: int | None, mtime: float | None) -> BinaryIO:
    """The file at ``path`` opened for reading, if it is still the regular file that was indexed; an
    ImageError otherwise (opened without blocking, so a FIFO put in its place cannot hang the caller)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ImageError(f"cannot read: {e.strerror or e}") from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size or st.st_mtime != mtime:
        f.close()
        raise ImageError("the file changed since it was indexed (index the folder again)")
    return f


def read_dimensions(f: BinaryIO) -> tuple[int, int]:
    """(width, height) of an open photo file as shown, EXIF rotation applied, from its header alone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(f) as im:
                width, height = im.size
                turned = im.getexif().get(ORIENTATION) in TURNED
    except Exception as e:
        raise ImageError(f"cannot read the header: {e}") from None
    return (height, width) if turned else (width, height)


def dimensions(path: str, size: int | None, mtime: float | None) -> tuple[int, int] | None:
    """``read_dimensions`` of an indexed photo, or None when its file cannot be read or has changed."""
    try:
        with open_indexed(path, size, mtime) as f:
            return read_dimensions(f)
    except ImageError:
        return None
