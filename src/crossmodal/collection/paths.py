"""How file paths are stored in SQLite: as text when they are valid Unicode, else as the name's bytes.

On Linux a file name is bytes, and Python gives a name that is not valid UTF-8 as a str holding lone
surrogates (``os.fsdecode``), which SQLite refuses as text. Such a path is stored as a BLOB of the os's
bytes (``os.fsencode``), which maps back to the very same os path, so the file can be opened again.
Every other path stays plain TEXT, so existing collections and path globs are unchanged, and the two
never collide: SQLite never finds a BLOB equal to a TEXT.
"""

from __future__ import annotations

import os
from typing import Any


def encode_path(path: str | None) -> str | bytes | None:
    """The value a path is stored as: the str itself, or its os bytes when it is not valid Unicode."""
    if path is None:
        return None
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def decode_path(value: str | bytes | None) -> str | None:
    """The os path (a str, as ``os.fsdecode`` gives it) of a stored value."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def under(column: str, root: str) -> tuple[str, list[Any]]:
    """An SQL condition, with its parameters, true for stored paths in ``column`` below the folder ``root``."""
    prefix = root.rstrip("/") + "/"
    raw = os.fsencode(prefix)
    clauses, params = [f"substr({column}, 1, ?) = ?"], [len(raw), raw]  # BLOB paths: substr counts bytes
    text = encode_path(prefix)
    if isinstance(text, str):
        clauses.append(f"substr({column}, 1, ?) = ?")  # TEXT paths: substr counts characters
        params += [len(text), text]
    return "(" + " OR ".join(clauses) + ")", params


def shown(path: str) -> str:
    """A path as printable text: bytes that are not UTF-8 appear as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
