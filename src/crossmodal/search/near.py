"""The ``near=LAT,LON,KM`` filter: photos whose GPS position (the ``lat``/``lon`` fields read from EXIF)
lies within KM kilometres, compiled to plain SQL arithmetic (no SQLite math functions needed).

The distance is equirectangular at the centre's latitude: within 0.5% of the great-circle distance up to
a few hundred kilometres away (a bounding box on latitude keeps it to the band that can match), across
the 180th meridian too. Photos without a position never match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

KM_PER_DEGREE = 111.195  # of latitude (mean Earth radius 6371 km)
LAT, LON = "json_extract(fields, '$.lat')", "json_extract(fields, '$.lon')"


@dataclass(frozen=True)
class Near:
    """A centre (degrees) and a radius (km)."""

    lat: float
    lon: float
    km: float

    @classmethod
    def parse(cls, value: str) -> Near:
        """``48.85,2.35,10`` -> Near(48.85, 2.35, 10.0)."""
        try:
            lat, lon, km = (float(part) for part in value.split(","))
        except ValueError:
            raise ValueError(f"bad filter near={value}: expected near=LAT,LON,KM, e.g. near=48.85,2.35,10") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 0 < km <= 20000):
            raise ValueError(f"bad filter near={value}: latitude -90..90, longitude -180..180, radius 0..20000 km")
        return cls(lat, lon, km)

    def sql(self) -> tuple[str, list[Any]]:
        """SQL selecting items within the radius."""
        band = self.km / KM_PER_DEGREE
        shrink = math.cos(math.radians(self.lat))
        dlat = f"({LAT} - ?)"
        dlon = f"(? * min(abs({LON} - ?), 360 - abs({LON} - ?)))"
        return (f"{LAT} BETWEEN ? AND ? AND {dlat} * {dlat} + {dlon} * {dlon} <= ?",
                [self.lat - band, self.lat + band, self.lat, self.lat, shrink, self.lon, self.lon, shrink,
                 self.lon, self.lon, band * band])
