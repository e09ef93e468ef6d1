"""Dates compare as dates in --where (a partial date is a period), near=LAT,LON,KM, and dates in query words."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime

import pytest

from crossmodal.search.dates import Period, in_text
from crossmodal.search.filters import parse_condition, where_clause

TAKEN = ["2023-05-31T23:59:59", "2023-06-01T00:00:00", "2023-06-14T10:22:00", "2023-06-30T23:59:59",
         "2023-07-01T00:00:00", "2024-01-01T08:00:00"]
PLACES = {"paris": (48.8566, 2.3522), "versailles": (48.8049, 2.1204), "london": (51.5072, -0.1276),
          "fiji-west": (-17.8, 179.9), "fiji-east": (-17.8, -179.9)}


@pytest.fixture
def db() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, kind TEXT, path TEXT, mtime REAL, fields TEXT)")
    for i, taken in enumerate(TAKEN):
        mtime = datetime.fromisoformat(taken).timestamp()
        db.execute("INSERT INTO items VALUES (?, 'image', ?, ?, ?)", (i, taken, mtime, json.dumps({"taken": taken})))
    for i, (name, (lat, lon)) in enumerate(PLACES.items(), start=100):
        db.execute("INSERT INTO items VALUES (?, 'image', ?, 0, ?)", (i, name, json.dumps({"lat": lat, "lon": lon})))
    db.execute("INSERT INTO items VALUES (200, 'image', 'nothing', 0, '{}')")
    return db


def matching(db: sqlite3.Connection, *specs: str) -> list[str]:
    sql, params = where_clause("image", None, [parse_condition(s) for s in specs])
    return [r[0] for r in db.execute(f"SELECT path FROM items WHERE {sql} ORDER BY id", params)]


def test_partial_dates_compare_as_periods(db: sqlite3.Connection) -> None:
    june = TAKEN[1:4]
    assert matching(db, "taken=2023-06") == june
    assert matching(db, "taken>=2023-06") == TAKEN[1:]
    assert matching(db, "taken<=2023-06") == TAKEN[:4]
    assert matching(db, "taken>2023-06") == TAKEN[4:]
    assert matching(db, "taken<2023-06") == TAKEN[:1]
    # photos without a date are not in June 2023 either (filters.py: != keeps items that lack the field)
    assert matching(db, "taken!=2023-06") == [TAKEN[0], *TAKEN[4:], *PLACES, "nothing"]
    assert matching(db, "taken=2023") == TAKEN[:5] and matching(db, "taken>=2024") == TAKEN[5:]
    assert matching(db, "taken=2023-06-14") == [TAKEN[2]]
    assert matching(db, "taken>=2023-06-14T10:22", "taken<2023-07") == TAKEN[2:4]


def test_built_in_times_compare_with_the_period_in_local_time(db: sqlite3.Connection) -> None:
    assert matching(db, "mtime=2023-06") == TAKEN[1:4]
    assert matching(db, "mtime>=2024") == TAKEN[5:]
    assert matching(db, f"mtime>{time.time() + 86400:.0f}") == []  # a number stays a number


def test_bad_dates_are_refused_and_years_elsewhere_stay_numbers() -> None:
    with pytest.raises(ValueError, match="not a real date"):
        parse_condition("taken>=2023-13")
    assert parse_condition("count=2023").value == 2023
    assert parse_condition("taken=2023").value == Period("2023")
    assert Period("2024-02").bounds() == (datetime(2024, 2, 1), datetime(2024, 3, 1))
    assert Period("2023-12-31T23").bounds()[1] == datetime(2024, 1, 1)


def test_near_filter(db: sqlite3.Connection) -> None:
    assert matching(db, "near=48.8566,2.3522,5") == ["paris"]
    assert matching(db, "near=48.8566,2.3522,25") == ["paris", "versailles"]  # 17 km apart
    assert matching(db, "near=48.8566,2.3522,400") == ["paris", "versailles", "london"]  # 344 km
    assert matching(db, "near=-17.8,180,20") == ["fiji-west", "fiji-east"]  # across the 180th meridian
    with pytest.raises(ValueError, match="near=LAT,LON,KM"):
        parse_condition("near=48.8,2.3")
    with pytest.raises(ValueError, match="latitude"):
        parse_condition("near=91,0,5")


def test_dates_in_query_words() -> None:
    assert in_text("dog beach 2023 France") == ("dog beach France", Period("2023"), "2023")
    assert in_text("skiing in June 2021") == ("skiing in", Period("2021-06"), "June 2021")
    assert in_text("party 2022-12-31") == ("party", Period("2022-12-31"), "2022-12-31")
    assert in_text("a dog with 2 balls") == ("a dog with 2 balls", None, None)
    assert in_text("room 1850") == ("room 1850", None, None)
