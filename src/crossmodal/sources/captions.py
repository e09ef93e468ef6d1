"""Caption files: TSV, CSV, JSONL or plain text, read into (text, fields) records."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_KEYS = ("caption", "text", "sentence", "raw")


class CaptionFileError(ValueError):
    """The caption file cannot be read as a whole (wrong format, no text column)."""


@dataclass
class CaptionRecord:
    """One caption with its other columns (e.g. ``image``) as fields; ``line`` for error messages."""

    text: str
    fields: dict[str, Any] = field(default_factory=dict)
    line: int = 0


def read_captions(path: str | Path) -> tuple[list[CaptionRecord], list[str]]:
    """Read captions; returns (records, problems). Empty captions are reported, not returned.

    Formats by suffix: ``.tsv``/``.csv`` with a header (a ``caption`` or ``text`` column, or the last
    column), ``.jsonl`` (objects with ``caption``/``text``), anything else one caption per line.
    """
    path = Path(path)
    if not path.is_file():
        raise CaptionFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        rows = _read_table(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".jsonl":
        rows = _read_jsonl(path)
    else:
        rows = [(i, {"text": line}) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    records, problems = [], []
    for line, row in rows:
        key = next((k for k in TEXT_KEYS if k in row), None)
        text = str(row.get(key, "")).strip() if key else ""
        if not text:
            problems.append(f"{path}:{line}: empty caption, skipped")
            continue
        fields = {k: v for k, v in row.items() if k != key and v not in (None, "")}
        records.append(CaptionRecord(text, fields, line))
    return records, problems


def _read_table(path: Path, delimiter: str) -> list[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            return []
        header = [h.strip().lower() for h in header]
        if not any(k in header for k in TEXT_KEYS):
            header[-1] = "caption"
        return [(reader.line_num, dict(zip(header, row, strict=False))) for row in reader if row]


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CaptionFileError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        rows.append((i, obj if isinstance(obj, dict) else {"text": obj}))
    return rows
