"""Decoding photos inside requests at a bounded cost: query photos under a pixel cap far below indexing's,
reduced as they are decoded; thumbnails at a few fixed sizes, cached, read only from the regular file
that was indexed; at most ``DECODES`` decodes at once (each can take hundreds of MB)."""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO

from PIL import Image, ImageOps

from ..sources.images import DECODE_SIDE, DEFAULT_MAX_PIXELS, ImageError, load_image, to_rgb
from ..sources.photo_files import open_indexed
from ..sources.videos import frame_at

QUERY_MAX_PIXELS = 40_000_000  # a query photo over this is refused before it is decoded
THUMBNAIL_SIDES = (128, 256, 512, 1024)  # a requested size is served at the next of these
MAX_ORIGINAL = 64 * 1024 * 1024  # a larger photo file is shown as a JPEG of the largest thumbnail side
# Formats browsers show as they are (MPO: a camera's JPEG with extra frames); others are converted to JPEG.
SHOWN = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
         "BMP": "image/bmp"}
DECODES = 2  # decodes at once, per server


class TooLarge(ImageError):
    """A photo refused for its pixel count alone, before decoding."""


def query_photo(data: bytes) -> Image.Image:
    """A search-by-photo upload as an RGB image no larger than needed: refused over ``QUERY_MAX_PIXELS``
    from its header, JPEG decoded at a reduced scale, other formats reduced by an integer factor."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Exception:  # load_image says what is wrong with it
        w = h = 0
    if w * h > QUERY_MAX_PIXELS:
        raise TooLarge(f"{w}x{h} = {w * h / 1e6:.0f} megapixels is over the {QUERY_MAX_PIXELS / 1e6:.0f} MP limit "
                       "for query photos")
    image = load_image(data, max_pixels=QUERY_MAX_PIXELS)
    factor = min(image.size) // DECODE_SIDE
    return image.reduce(factor) if factor > 1 else image


def snap(size: int) -> int:
    """The fixed thumbnail side that serves a requested ``size``: the smallest one at least as large."""
    return next((s for s in THUMBNAIL_SIDES if s >= size), THUMBNAIL_SIDES[-1])


def thumbnail(path: str, size: int | None, mtime: float | None, side: int) -> bytes:
    """JPEG bytes of the photo at ``path``, at most ``side`` pixels wide and high; reads only the regular file
    that was indexed (``open_indexed``)."""
    with open_indexed(path, size, mtime) as f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(f) as im:
                    if im.width * im.height > DEFAULT_MAX_PIXELS:
                        raise ImageError(f"{im.width}x{im.height} is over the {DEFAULT_MAX_PIXELS / 1e6:.0f} MP limit")
                    im.draft("RGB", (side, side))
                    if im.mode not in ("RGB", "RGBA", "L", "LA"):
                        im = to_rgb(im)
                    im.thumbnail((side, side))
                    small = to_rgb(ImageOps.exif_transpose(im))
        except ImageError:
            raise
        except Exception as e:
            raise ImageError(f"cannot decode: {e}") from None
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=85)
    return out.getvalue()


def moment_thumbnail(video: str, size: int | None, mtime: float | None, t: float, side: int) -> bytes:
    """JPEG bytes of a video's frame at ``t`` seconds, at most ``side`` pixels wide and high: one seek and the
    frames up to ``t`` decoded (sources/videos.py), from the regular file that was indexed only."""
    with open_indexed(video, size, mtime) as f:
        small = frame_at(f, t)
    small.thumbnail((side, side))
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=85)
    return out.getvalue()


def original(path: str, size: int | None, mtime: float | None) -> tuple[BinaryIO, str] | None:
    """The indexed photo's file opened at its start, with its media type, when browsers can show it as it is;
    None when it must be converted (another format, or over ``MAX_ORIGINAL`` bytes); an ImageError when it
    cannot be read (``open_indexed``)."""
    f = open_indexed(path, size, mtime)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kind = Image.open(f).format  # reads the header only; the file stays open
    except Exception as e:
        f.close()
        raise ImageError(f"cannot read the header: {e}") from None
    if kind not in SHOWN or (size or 0) > MAX_ORIGINAL:
        f.close()
        return None
    f.seek(0)
    return f, SHOWN[kind]


def chunks(f: BinaryIO, size: int | None, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """The first ``size`` bytes of an open file (its size when indexed, so a file that grew while it is sent
    never sends more than the length announced), a chunk at a time; closes it at the end."""
    with f:
        left = size or 0
        while left > 0 and (data := f.read(min(chunk, left))):
            left -= len(data)
            yield data


class ThumbnailCache:
    """Thumbnail bytes by (path, content hash, side), least recently used dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[str, str, int], data: bytes) -> None:
        with self._lock:
            if key in self._items or len(data) > self.max_bytes:
                return
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)
