"""Safe photo decoding: every readable photo becomes an upright RGB image, anything else a clear error."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..defaults import DEFAULT_MAX_PIXELS

try:  # HEIC/HEIF/AVIF from phones, when the optional pillow-heif is installed.
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF = True
except ImportError:  # pragma: no cover - depends on the environment
    HEIF = False

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    | ({".heic", ".heif", ".avif"} if HEIF else set())
)
# The largest side we decode at: JPEGs are decoded at a reduced scale (draft mode) down to this.
DECODE_SIDE = 1024

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = None  # we apply our own cap, with a clearer message, in load_image


class ImageError(Exception):
    """A photo that cannot be used; the message says why in one line."""


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def load_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open a photo (a path or the file's bytes) as an upright 8-bit RGB image, or raise ImageError.

    Applies EXIF orientation; flattens transparency onto white; converts CMYK, palette, grayscale and
    16-bit images; refuses images over ``max_pixels`` before decoding them (decompression bombs).
    """
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageError("empty file")
        opened = io.BytesIO(source)
    else:
        opened = Path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(opened) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{w}x{h} = {w * h / 1e6:.0f} megapixels is over the {max_pixels / 1e6:.0f} MP limit "
                        "(raise it with --max-pixels)"
                    )
                if im.format == "JPEG":
                    im.draft("RGB", (DECODE_SIDE, DECODE_SIDE))
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except Image.UnidentifiedImageError:
        size = opened.stat().st_size if isinstance(opened, Path) else len(source)
        raise ImageError("empty file" if size == 0 else "not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as e:
        raise ImageError(f"cannot decode: {e}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels become white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        im = Image.fromarray(((arr - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB") if im.mode != "RGB" else im
