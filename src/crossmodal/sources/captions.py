"""Caption files: TSV, CSV, JSONL or plain text, read into (text, fields) records.

A file is read as UTF-8 (a leading byte-order mark, as Excel writes, is dropped). A row that cannot be
used (an empty or over-long caption, a caption that is not text) is a problem with its line, reported
and skipped; a file whose structure is broken (not UTF-8, invalid JSON, a CSV quote left open) is a
CaptionFileError naming the file and line, so nothing is indexed from a half-understood file.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_KEYS = ("caption", "text", "sentence", "raw")
# Far beyond what any text tower reads (77 to 512 tokens): a longer "caption" is a file gone wrong (a wrong
# column, a swallowed block of rows) rather than a caption, so it is reported and skipped, not truncated.
MAX_CAPTION_CHARS = 10_000
# csv's own default field limit, checked here too: csv's limit is process-wide and some libraries raise it
# when imported (reverse_geocode does), which would let a runaway field through.
FIELD_LIMIT = 131_072
# A quoted CSV field may hold line breaks; one running over more lines than this is a quote left open.
MAX_ROW_LINES = 20

Rows = Iterator[tuple[int, dict[str, Any]]]


class CaptionFileError(ValueError):
    """The caption file cannot be read as a whole (not UTF-8, wrong format, broken quoting, no text column)."""


@dataclass
class CaptionRecord:
    """One caption with its other columns (e.g. ``image``) as fields; ``line`` for error messages."""

    text: str
    fields: dict[str, Any] = field(default_factory=dict)
    line: int = 0


def read_captions(path: str | Path) -> tuple[list[CaptionRecord], list[str]]:
    """Read captions; returns (records, problems with single rows, each "file:line: what, skipped").

    Formats by suffix: ``.tsv`` (tabs only: quotes are text) and ``.csv`` with a header (a ``caption`` or
    ``text`` column, or the last column), ``.jsonl`` (objects with ``caption``/``text``), anything else one
    caption per line. Empty captions, captions that are not text and captions over ``MAX_CAPTION_CHARS``
    characters are problems; raises CaptionFileError (with file and line) when the file itself is broken.
    """
    path = Path(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        rows = _read_tsv(text)
    elif suffix == ".csv":
        rows = _read_csv(path, text)
    elif suffix == ".jsonl":
        rows = _read_jsonl(path, text)
    else:
        rows = ((i, {"text": line}) for i, line in enumerate(io.StringIO(text), 1))
    records, problems = [], []
    for line, row in rows:
        key = next((k for k in TEXT_KEYS if k in row), None)
        value = row.get(key) if key else None
        if isinstance(value, (dict, list)):
            problems.append(f"{path}:{line}: the caption is not text, skipped")
            continue
        caption = "" if value is None else str(value).strip()
        if not caption:
            problems.append(f"{path}:{line}: empty caption, skipped")
        elif len(caption) > MAX_CAPTION_CHARS:
            problems.append(f"{path}:{line}: caption of {len(caption):,} characters (over {MAX_CAPTION_CHARS:,}), "
                            "skipped")
        else:
            fields = {k: v for k, v in row.items() if k != key and v not in (None, "")}
            records.append(CaptionRecord(caption, fields, line))
    return records, problems


def _read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8 without a byte-order mark; errors name the file (and line)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaptionFileError(f"{path}: no such file") from None
    except OSError as e:
        raise CaptionFileError(f"{path}: cannot read: {e.strerror or e}") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CaptionFileError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}); save the file as "
                               "UTF-8") from None


def _header(names: list[str]) -> list[str]:
    """Column names, lower-cased; the last column is the caption when none is named like one."""
    header = [h.strip().lower() for h in names]
    if not any(k in header for k in TEXT_KEYS):
        header[-1] = "caption"
    return header


def _read_tsv(text: str) -> Rows:
    """Tab-separated rows, one a line: a quote is an ordinary character, so one row never swallows others."""
    lines = enumerate(io.StringIO(text, newline=""), 1)
    header = None
    for number, raw in lines:
        cells = raw.rstrip("\r\n").split("\t")
        if header is None:
            if cells == [""]:
                return
            header = _header(cells)
        elif cells != [""]:
            yield number, dict(zip(header, cells, strict=False))


class _Lines:
    """The lines of a text for csv.reader, noting when they ran out (to tell a quote left open at the end)."""

    def __init__(self, text: str) -> None:
        self._lines = io.StringIO(text, newline="")
        self.done = False
        self.last = ""

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._lines.readline()
        if not line:
            self.done = True
            raise StopIteration
        self.last = line
        return line


def _read_csv(path: Path, text: str) -> Rows:
    """Comma-separated rows with CSV quoting; a quoted field that never closes, or runs over
    ``MAX_ROW_LINES`` lines, is a CaptionFileError at the line where it opened."""
    lines = _Lines(text)
    reader = csv.reader(lines)
    header = None
    start = 1
    try:
        for row in reader:
            if lines.done and lines.last.endswith(("\n", "\r")):  # the rows ran out inside quotes
                raise CaptionFileError(f"{path}:{start}: a quote opened on this row is never closed (it runs to "
                                       f"the end of the file, line {reader.line_num})")
            if reader.line_num - start >= MAX_ROW_LINES:
                raise CaptionFileError(f"{path}:{start}: a quoted field runs over {reader.line_num - start + 1} "
                                       f"lines, to line {reader.line_num}: a quote left open?")
            if any(len(field_) > FIELD_LIMIT for field_ in row):  # whatever limit another library set for csv
                raise CaptionFileError(f"{path}:{start}: field larger than field limit ({FIELD_LIMIT})")
            if header is None:
                header = _header(row) if row else None
            elif row:
                yield start, dict(zip(header, row, strict=False))
            start = reader.line_num + 1
    except csv.Error as e:
        raise CaptionFileError(f"{path}:{start}: {e} (to line {reader.line_num}); a quote left open?") from None


def _read_jsonl(path: Path, text: str) -> Rows:
    """One JSON value a line: an object's keys are columns, anything else is the caption itself."""
    for i, line in enumerate(io.StringIO(text), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CaptionFileError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise CaptionFileError(f"{path}:{i}: JSON nested too deeply") from None
        yield i, obj if isinstance(obj, dict) else {"text": obj}
