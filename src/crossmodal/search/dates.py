"""Dates in filters and queries: a partial ISO date (``2023``, ``2023-06``, ``2023-06-14T10``) names a
period, and comparing with it compares with that period.

Photo dates are stored as ISO-8601 text (``2023-06-14T10:22:00``), so ``taken>=2023-06`` is a text
comparison with the period's start, and ``taken<=2023-06`` one with a bound just after every text that
starts with ``2023-06``; built-in times (``mtime``, ``added``) are seconds since the epoch, compared with
the period's start and end in local time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# A bare year is a date for these keys only (elsewhere ``2023`` stays a number).
DATE_KEYS = frozenset({"taken", "mtime", "added"})
EPOCH_KEYS = frozenset({"mtime", "added"})
_PARTIAL = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2})(?::(\d{2})(?::(\d{2}))?)?)?)?)?")
_MONTHS = {m: i for i, m in enumerate(("january", "february", "march", "april", "may", "june", "july", "august",
                                       "september", "october", "november", "december"), 1)}
_MONTHS |= {m[:3]: i for m, i in list(_MONTHS.items())}
# In a query's words: a year (1900-2099), optionally after a month name, or an ISO date.
_IN_TEXT = re.compile(r"\b(?:(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) +
                      r")\s+)?(?P<date>(?:19|20)\d\d(?:-\d\d(?:-\d\d)?)?)\b", re.IGNORECASE)
AFTER_ALL = "~"  # sorts after every character an ISO date is written with


@dataclass(frozen=True)
class Period:
    """A partial ISO date, the period it names: ``text`` is the prefix every date in it starts with."""

    text: str

    def bounds(self) -> tuple[datetime, datetime]:
        """The period's first instant and the first instant after it."""
        parts = [int(p) for p in _PARTIAL.fullmatch(self.text).groups() if p is not None]
        start = datetime(*parts, *([1] * max(0, 3 - len(parts))))  # type: ignore[misc]
        if len(parts) == 1:
            return start, start.replace(year=start.year + 1)
        if len(parts) == 2:
            return start, (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        step = (timedelta(days=1), timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1))[len(parts) - 3]
        return start, start + step

    def sql(self, lhs: str, op: str, epoch: bool) -> tuple[str, list[Any]]:
        """``lhs OP period`` as SQL: = means within it, < before it, <= before its end, and so on."""
        if epoch:
            low, high = (t.timestamp() for t in self.bounds())
        else:
            low, high = self.text, self.text + AFTER_ALL
        within = (f"({lhs} >= ? AND {lhs} < ?)", [low, high])
        return {"=": within, "!=": (f"NOT {within[0]}", within[1]), "<": (f"{lhs} < ?", [low]),
                "<=": (f"{lhs} < ?", [high]), ">": (f"{lhs} >= ?", [high]), ">=": (f"{lhs} >= ?", [low])}[op]


def period(key: str, value: Any) -> Period | None:
    """The period a filter value names (``2023-06``, or a bare year for a date key), or None."""
    text = str(value) if isinstance(value, int) and key in DATE_KEYS else value
    if not isinstance(text, str):
        return None
    match = _PARTIAL.fullmatch(text.strip())
    if match is None:
        return None
    canonical = _canonical(match)
    if canonical is None:
        raise ValueError(f"{text!r} is not a real date (use YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM)")
    return canonical


def in_text(text: str) -> tuple[str, Period | None, str | None]:
    """A date in a query's words (``2023``, ``June 2023``, ``2023-06-14``): (the words without it, its
    period, the words that named it); the text unchanged and None when there is none."""
    match = _IN_TEXT.search(text)
    if match is None:
        return text, None, None
    found = _canonical(_PARTIAL.fullmatch(match["date"]))
    if found is None:
        return text, None, None
    if match["month"] and "-" not in match["date"]:
        found = Period(f"{found.text}-{_MONTHS[match['month'].lower()]:02d}")
    rest = " ".join((text[:match.start()] + " " + text[match.end():]).split())
    return rest, found, match[0]


def _canonical(match: re.Match[str]) -> Period | None:
    parts = [p for p in match.groups() if p is not None]
    try:
        datetime(*[int(p) for p in parts], *([1] * max(0, 3 - len(parts))))  # type: ignore[misc]
    except ValueError:
        return None
    seps = ["", "-", "-", "T", ":", ":"]
    return Period("".join(sep + p for sep, p in zip(seps, parts, strict=False)))
