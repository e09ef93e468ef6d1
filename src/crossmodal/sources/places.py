"""Place names from GPS coordinates, offline: the nearest GeoNames town (population over 1,000) from the
``reverse_geocode`` package, which ships the data; no network, no API key.

The nearest town is a point, not a border: a photo taken far from any town (at sea, in a desert) gets no
place name rather than a wrong one, and near a border the town may lie in the neighbouring country.
"""

from __future__ import annotations

import math
import threading
from typing import Any

MAX_KM = 50.0  # farther than this from the nearest known town: no place name
EARTH_KM = 6371.0
_lock = threading.Lock()
_data: Any = None


def place_of(lat: float, lon: float) -> dict[str, str]:
    """``city``, ``region`` and ``country`` of the nearest known town within ``MAX_KM``; {} when there is
    none or the place data is not installed."""
    data = _geonames()
    if data is None:
        return {}
    found = dict(data.query([(lat, lon)])[0])
    if distance_km(lat, lon, found["latitude"], found["longitude"]) > MAX_KM:
        return {}
    names = {"city": found.get("city"), "region": found.get("state"), "country": found.get("country")}
    return {key: value for key, value in names.items() if value}


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def _geonames() -> Any:
    """The place data, loaded once (about a second and 100 MB) by the first photo with GPS."""
    global _data
    with _lock:
        if _data is None:
            try:
                import reverse_geocode
            except ImportError:
                _data = False
            else:
                _data = reverse_geocode.GeocodeData()
    return _data or None
