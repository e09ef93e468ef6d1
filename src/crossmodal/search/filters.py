"""Filters on path globs and metadata fields, compiled to SQL so they apply before ranking."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .dates import EPOCH_KEYS, Period, period
from .near import Near

COLUMNS = {"path", "text", "size", "mtime", "hash", "added", "id"}
BUILT_IN = COLUMNS | {"near"}  # keys every collection knows: the columns and near=LAT,LON,KM
_OPS = ("<=", ">=", "!=", "=", "<", ">")
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
            return self.value.sql(lhs, self.op, self.key in EPOCH_KEYS)
        if self.key in COLUMNS:
            lhs, params = self.key, []
        else:
            lhs, params = "json_extract(fields, ?)", [f'$."{self.key}"']
        return f"{lhs} {self.op} ?", [*params, self.value]


def parse_condition(spec: str) -> Condition:
    """Parse ``key=value``, ``key!=value``, ``key>=3`` ...; numbers compare as numbers."""
    for op in _OPS:
        key, sep, value = spec.partition(op)
        if sep:
            key = key.strip()
            if not _KEY.match(key):
                raise ValueError(f"bad filter {spec!r}: field names are letters, digits, '_', '.', '-'")
            if key == "near" and op == "=":
                return Condition(key, op, Near.parse(value.strip()))
            coerced = _coerce(value.strip())
            if isinstance(coerced, int) and not INT64[0] <= coerced <= INT64[1]:
                raise ValueError(f"bad filter {spec!r}: the number is outside SQLite's integer range "
                                 "(-2**63 .. 2**63-1)")
            try:
                when = period(key, coerced)
            except ValueError as e:
                raise ValueError(f"bad filter {spec!r}: {e}") from None
            return Condition(key, op, coerced if when is None else when)
    raise ValueError(f"bad filter {spec!r}: expected KEY=VALUE (or !=, <, <=, >, >=)")


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def where_clause(kind: str, path_glob: str | None = None, conditions: list[Condition] | None = None
                 ) -> tuple[str, list[Any]]:
    """SQL WHERE text and parameters selecting the items of ``kind`` that pass every filter."""
    parts, params = ["kind = ?"], [kind]
    if path_glob:
        parts.append("CAST(path AS TEXT) GLOB ?")  # a non-UTF-8 name is stored as bytes
        params.append(path_glob)
    for cond in conditions or []:
        sql, p = cond.sql()
        parts.append(sql)
        params += p
    return " AND ".join(parts), params
