"""What a photo says about itself: EXIF date, camera, lens, orientation and GPS, IPTC/XMP keywords, title
and place, read from the file's header (no pixel is decoded) as plain fields that ``--where`` filters on.

Dates become ISO-8601 text (``2023-06-14T10:22:00``, the camera's local time as written), so a prefix such
as ``2023-06`` compares as a date; GPS becomes ``lat``/``lon`` degrees; a place name comes from the
coordinates offline (places.py) unless the photo names its own place (IPTC/XMP city, region, country).
"""

from __future__ import annotations

import io
import math
import re
import warnings
import xml.etree.ElementTree as ElementTree
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, IptcImagePlugin

from .places import place_of

# Bump when what is read changes: photos read by an older version are read again on the next ``index``.
VERSION = 1
MAX_XMP = 1 << 20  # an XMP packet larger than this is not parsed
MAX_TEXT = 500  # longer text values are cut

_IFD0 = {0x010F: "make", 0x0110: "camera", 0x0112: "orientation"}
_DATES = (0x9003, 0x9004)  # DateTimeOriginal, DateTimeDigitized (in the Exif IFD); then IFD0's DateTime
_LENS = 0xA434
_XP_TITLE, _XP_KEYWORDS = 0x9C9B, 0x9C9E  # Windows' UTF-16 tags
_IPTC = {(2, 5): "title", (2, 90): "city", (2, 95): "region", (2, 101): "country"}
_IPTC_KEYWORDS = (2, 25)
_NS = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "dc": "http://purl.org/dc/elements/1.1/",
       "photoshop": "http://ns.adobe.com/photoshop/1.0/"}
_XMP_PLACES = {"City": "city", "State": "region", "Country": "country"}


def read_metadata(source: str | Path | bytes) -> dict[str, Any]:
    """The fields a photo file carries (a path or the file's bytes); {} for a file Pillow cannot open."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source) as im:
                return photo_fields(im)
    except Exception:  # metadata is a bonus: a photo with unreadable metadata is still a photo
        return {}


def photo_fields(im: Image.Image) -> dict[str, Any]:
    """EXIF, IPTC and XMP fields of an opened photo; each part that cannot be parsed is left out."""
    out: dict[str, Any] = {}
    for part in (_exif, _iptc, _xmp):
        try:
            for key, value in part(im).items():
                out.setdefault(key, value)
        except Exception:  # one malformed block must not hide the others
            continue
    if "lat" in out and "city" not in out and "country" not in out:
        out.update(place_of(out["lat"], out["lon"]))
    return out


def _exif(im: Image.Image) -> dict[str, Any]:
    exif = im.getexif()
    out: dict[str, Any] = {}
    for tag, key in _IFD0.items():
        value = exif.get(tag)
        if key == "orientation":
            if isinstance(value, int) and 1 <= value <= 8:
                out[key] = value
        elif (text := _text(value)) is not None:
            out[key] = text
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    for value in [sub.get(tag) for tag in _DATES] + [exif.get(0x0132)]:
        if (taken := exif_date(value)) is not None:
            out["taken"] = taken
            break
    if (lens := _text(sub.get(_LENS))) is not None:
        out["lens"] = lens
    if (title := _xp(exif.get(_XP_TITLE))) is not None:
        out["title"] = title
    if (keywords := _xp(exif.get(_XP_KEYWORDS))) is not None:
        out["keywords"] = ", ".join(k.strip() for k in keywords.split(";") if k.strip())
    out.update(gps(exif.get_ifd(ExifTags.IFD.GPSInfo)))
    return out


def exif_date(value: Any) -> str | None:
    """``2023:06:14 10:22:00`` (EXIF) -> ``2023-06-14T10:22:00``; None for a missing or impossible date."""
    text = _text(value)
    if text is None:
        return None
    match = re.match(r"(\d{4})[:-](\d{2})[:-](\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?", text)
    if match is None:
        return None
    parts = [int(p) if p else 0 for p in match.groups()]
    try:
        return datetime(*parts).isoformat()  # type: ignore[arg-type]
    except ValueError:  # 0000:00:00 00:00:00 and other placeholders
        return None


def gps(ifd: Any) -> dict[str, float]:
    """``lat``/``lon`` in signed degrees from an EXIF GPS IFD; {} when absent or out of range."""
    try:
        lat, lon = _degrees(ifd[2], ifd.get(1)), _degrees(ifd[4], ifd.get(3))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return {}
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return {}
    if lat == 0 and lon == 0:  # what phones write when they had no fix
        return {}
    return {"lat": round(lat, 6), "lon": round(lon, 6)}


def _degrees(dms: Any, ref: Any) -> float:
    parts = [float(x) for x in (dms if isinstance(dms, tuple | list) else (dms,))]
    value = sum(p / 60**i for i, p in enumerate(parts[:3]))
    return -value if _text(ref) in ("S", "W") else value


def _iptc(im: Image.Image) -> dict[str, Any]:
    info = IptcImagePlugin.getiptcinfo(im) or {}
    out: dict[str, Any] = {}
    for tag, key in _IPTC.items():
        if (text := _text(_decode(info.get(tag)))) is not None:
            out[key] = text
    raw = info.get(_IPTC_KEYWORDS)
    words = [_decode(k) for k in (raw if isinstance(raw, list) else [raw] if raw else [])]
    if words := [w.strip() for w in words if w and w.strip()]:
        out["keywords"] = _cut(", ".join(words))
    return out


def _xmp(im: Image.Image) -> dict[str, Any]:
    packet = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if not packet or len(packet) > MAX_XMP:
        return {}
    root = ElementTree.fromstring(packet.encode() if isinstance(packet, str) else packet.strip(b"\0 \n"))
    out: dict[str, Any] = {}
    titles = [li.text for li in root.iterfind(".//dc:title//rdf:li", _NS) if li.text and li.text.strip()]
    if titles:
        out["title"] = _cut(titles[0].strip())
    words = [li.text.strip() for li in root.iterfind(".//dc:subject//rdf:li", _NS) if li.text and li.text.strip()]
    if words:
        out["keywords"] = _cut(", ".join(words))
    for name, key in _XMP_PLACES.items():
        tag = f"{{{_NS['photoshop']}}}{name}"
        for node in root.iter():
            value = node.attrib.get(tag) or (node.text if node.tag == tag else None)
            if value and value.strip():
                out.setdefault(key, _cut(value.strip()))
    return out


def _decode(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return value


def _xp(value: Any) -> str | None:
    """A Windows XP* tag (UTF-16LE bytes, or a tuple of byte values) as text."""
    if isinstance(value, tuple):
        value = bytes(value)
    if isinstance(value, bytes):
        return _text(value.decode("utf-16-le", errors="ignore"))
    return _text(value)


def _text(value: Any) -> str | None:
    """A tag's value as stripped printable text (None when empty or not text)."""
    if isinstance(value, bytes):
        value = _decode(value)
    if not isinstance(value, str):
        return None
    value = "".join(ch for ch in value if ch.isprintable()).strip()
    return _cut(value) if value else None


def _cut(text: str) -> str:
    return text[:MAX_TEXT]
