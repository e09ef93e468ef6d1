"""Filters on path globs and metadata fields, compiled to SQL so they apply before ranking.

A condition is ``KEY OP VALUE`` with OP one of =, !=, <, <=, >, >=. The built-in numeric columns (size,
mtime, added, id) take numbers (mtime and added also dates), and a value that starts with an operator
character (``size>>3``) is refused, so a mistyped filter is an error instead of an empty answer. An item
without the field never matches =, <, <=, > or >=, and always matches != (it is not equal to the value;
SQL's NULL would leave it out).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .dates import EPOCH_KEYS, Period, period
from .near import Near

COLUMNS = {"path", "text", "size", "mtime", "hash", "added", "id"}
NUMERIC = {"size", "mtime", "added", "id"}  # columns holding numbers (mtime, added: seconds since the epoch)
BUILT_IN = COLUMNS | {"near"}  # keys every collection knows: the columns and near=LAT,LON,KM
_OPERATOR_CHARS = "<>=!"
# The key is what comes before the first operator character; two-character operators win at that place.
_CONDITION = re.compile(r"\s*(?P<key>[^<>=!]*?)\s*(?P<op><=|>=|!=|=|<|>)\s*(?P<value>.*?)\s*", re.DOTALL)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
INT64 = (-(2**63), 2**63 - 1)  # SQLite's INTEGER: a larger Python int cannot be bound as a parameter


@dataclass(frozen=True)
class Condition:
    """``key OP value``; key is a built-in column (path, size, mtime, ...) or a user field; a ``Period``
    value compares as a date (dates.py), a ``Near`` one is the near=LAT,LON,KM filter (near.py)."""

    key: str
    op: str
    value: Any

    def sql(self) -> tuple[str, list[Any]]:
        if isinstance(self.value, Near):
            return self.value.sql()
        if isinstance(self.value, Period):
            if not _KEY.match(self.key):
                raise ValueError(f"bad filter key {self.key!r}")
            lhs = self.key if self.key in COLUMNS else f"""json_extract(fields, '$."{self.key}"')"""
            sql, params = self.value.sql(lhs, self.op, self.key in EPOCH_KEYS)
            return (f"({lhs} IS NULL OR {sql})" if self.op == "!=" else sql), params
        if self.key in COLUMNS:
            lhs, params = self.key, []
        else:
            lhs, params = "json_extract(fields, ?)", [f'$."{self.key}"']
        return f"{lhs} {'IS NOT' if self.op == '!=' else self.op} ?", [*params, self.value]


def parse_condition(spec: str) -> Condition:
    """Parse ``key=value``, ``key!=value``, ``key>=3`` ...; numbers compare as numbers. Raises ValueError,
    saying what is wrong, for a filter that could only match by accident (see the module's docstring)."""
    match = _CONDITION.fullmatch(spec)
    if match is None:
        raise ValueError(f"bad filter {spec!r}: expected KEY=VALUE (or !=, <, <=, >, >=)")
    key, op, value = match["key"], match["op"], match["value"]
    if not _KEY.match(key):
        raise ValueError(f"bad filter {spec!r}: field names are letters, digits, '_', '.', '-'")
    if value[:1] and value[0] in _OPERATOR_CHARS:
        raise ValueError(f"bad filter {spec!r}: the value starts with {value[0]!r}; use one operator of =, !=, <, "
                         "<=, >, >=")
    if key == "near" and op == "=":
        return Condition(key, op, Near.parse(value))
    coerced = _coerce(value)
    if isinstance(coerced, int) and not INT64[0] <= coerced <= INT64[1]:
        raise ValueError(f"bad filter {spec!r}: the number is outside SQLite's integer range (-2**63 .. 2**63-1)")
    try:
        when = period(key, coerced)
    except ValueError as e:
        raise ValueError(f"bad filter {spec!r}: {e}") from None
    if key in NUMERIC and when is None and not (isinstance(coerced, int | float) and math.isfinite(coerced)):
        raise ValueError(f"bad filter {spec!r}: {key} takes a number" +
                         (" or a date (YYYY, YYYY-MM, YYYY-MM-DD)" if key in EPOCH_KEYS else ""))
    return Condition(key, op, coerced if when is None else when)


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def where_clause(kind: str | None, path_glob: str | None = None, conditions: list[Condition] | None = None
                 ) -> tuple[str, list[Any]]:
    """SQL WHERE text and parameters selecting the items of ``kind`` (None: of every kind) that pass every
    filter."""
    parts, params = (["kind = ?"], [kind]) if kind else ([], [])
    if path_glob:  # a non-UTF-8 name is stored as bytes; a video's moment (collection/moments.py) by its video
        parts.append("(CAST(path AS TEXT) GLOB ? OR CAST(json_extract(fields, '$.video') AS TEXT) GLOB ?)")
        params += [path_glob, path_glob]
    for cond in conditions or []:
        sql, p = cond.sql()
        parts.append(sql)
        params += p
    return " AND ".join(parts) or "1", params
