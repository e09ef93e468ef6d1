"""Reading a query's words for dates and places: "dog beach 2023 France" searches for "dog beach" among
photos taken in 2023 in France.

A year or date (``2023``, ``June 2023``, ``2023-06-14``) becomes a filter on the date taken, and a place
the collection knows (a ``city``, ``region`` or ``country`` value stored with its photos, read from EXIF
GPS or IPTC/XMP) a filter on that field; the words are taken out of what the model reads. Each is applied
only when some item matches it, so a query never ends empty because of a number that was not a date; what
was read, and how it was used, is returned as notes (the API answers them as ``understood``). Countries
and regions match in any case; a city only as written with a capital ("Nice", never "a nice dog").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .dates import in_text
from .filters import Condition

PLACE_FIELDS = ("country", "region", "city")
MAX_WORDS = 4  # the longest place name looked for, in words


@dataclass
class Understood:
    """What is left for the model to read, the filters read from the words, and notes saying what was done."""

    text: str
    conditions: list[Condition] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)


def understand(text: str, matches: Callable[[Condition], bool], places: dict[str, dict[str, str]]) -> Understood:
    """Read dates and places in ``text``. ``matches(condition)`` says whether any item passes it;
    ``places[field]`` maps each stored value of a place field, lower-cased, to the value as stored."""
    out = Understood(text)
    rest, period, said = in_text(out.text)
    if period is not None and rest.strip():
        _use(out, rest, Condition("taken", "=", period), said, matches)
    for name, value, said in _places(out.text, places):
        rest = " ".join(re.sub(rf"(?i)(?<!\w){re.escape(said)}(?!\w)", " ", out.text).split())
        if rest:
            _use(out, rest, Condition(name, "=", value), said, matches)
    return out


def _use(out: Understood, rest: str, condition: Condition, said: str, matches: Callable[[Condition], bool]) -> None:
    """Apply ``condition`` (and drop ``said`` from the words) when some item passes it; note either way."""
    note: dict[str, Any] = {"words": said, "field": condition.key,
                            "value": getattr(condition.value, "text", condition.value)}
    if matches(condition):
        out.text = rest
        out.conditions.append(condition)
        out.notes.append({**note, "as": "filter"})
    else:
        out.notes.append({**note, "as": "ignored", "why": "no item matches it"})


def _places(text: str, places: dict[str, dict[str, str]]) -> list[tuple[str, str, str]]:
    """(field, stored value, words as written) for the place names in ``text``, longest first, each once."""
    words = re.findall(r"[\w'-]+", text)
    found: list[tuple[str, str, str]] = []
    used: set[int] = set()
    for n in range(min(MAX_WORDS, len(words)), 0, -1):
        for start in range(len(words) - n + 1):
            span = set(range(start, start + n))
            if span & used:
                continue
            said = " ".join(words[start:start + n])
            for name in PLACE_FIELDS:
                value = places.get(name, {}).get(said.lower())
                if value is not None and (name != "city" or said[:1].isupper()):
                    found.append((name, value, said))
                    used |= span
                    break
    return found
