"""Where the sun is: NOAA's solar position algorithm, for ``solar`` schedules."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta, timezone

UTC = timezone.utc

# event: (the sun's altitude in degrees, -1 morning / 0 noon / +1 evening). -0.833 is the
# upper limb touching the horizon after refraction, as almanacs define sunrise.
SOLAR_EVENTS: dict[str, tuple[float, int]] = {
    "dawn_astronomical": (-18.0, -1),
    "dawn_nautical": (-12.0, -1),
    "dawn_civil": (-6.0, -1),
    "sunrise": (-0.833, -1),
    "solar_noon": (0.0, 0),
    "sunset": (-0.833, 1),
    "dusk_civil": (-6.0, 1),
    "dusk_nautical": (-12.0, 1),
    "dusk_astronomical": (-18.0, 1),
}


def _sun_position(julian_day: float) -> tuple[float, float]:
    """(declination in degrees, equation of time in minutes): NOAA's solar calculator."""
    t = (julian_day - 2451545.0) / 36525.0  # Julian centuries since J2000.0
    mean_long = math.radians((280.46646 + t * (36000.76983 + t * 0.0003032)) % 360)
    anomaly = math.radians(357.52911 + t * (35999.05029 - 0.0001537 * t))
    ecc = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    center = (
        math.sin(anomaly) * (1.914602 - t * (0.004817 + 0.000014 * t))
        + math.sin(2 * anomaly) * (0.019993 - 0.000101 * t)
        + math.sin(3 * anomaly) * 0.000289
    )
    omega = math.radians(125.04 - 1934.136 * t)
    apparent_long = mean_long + math.radians(center - 0.00569 - 0.00478 * math.sin(omega))
    seconds = 21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))
    obliquity = math.radians(23 + (26 + seconds / 60) / 60 + 0.00256 * math.cos(omega))
    declination = math.degrees(math.asin(math.sin(obliquity) * math.sin(apparent_long)))
    y = math.tan(obliquity / 2) ** 2
    eq_time = (
        y * math.sin(2 * mean_long)
        - 2 * ecc * math.sin(anomaly)
        + 4 * ecc * y * math.sin(anomaly) * math.cos(2 * mean_long)
        - 0.5 * y * y * math.sin(4 * mean_long)
        - 1.25 * ecc * ecc * math.sin(2 * anomaly)
    )
    return declination, 4 * math.degrees(eq_time)


def solar_event_utc(event: str, lat: float, lon: float, day: date) -> datetime | None:
    """When ``event`` happens on ``day`` at (lat, lon), in UTC; None if it does not.

    ``day`` is the local solar day (the event near that date's solar noon), so in the
    far east or west the UTC date may differ by one.
    """
    altitude, direction = SOLAR_EVENTS[event]
    phi = math.radians(lat)
    midnight = day.toordinal() + 1721424.5  # the Julian day at 00:00 UTC
    minutes = 720.0 - 4 * lon  # first guess: solar noon; refine at the event's own time
    for _ in range(3):
        declination, eq_time = _sun_position(midnight + minutes / 1440)
        hour_angle = 0.0
        if direction:
            delta = math.radians(declination)
            cos_ha = (math.sin(math.radians(altitude)) - math.sin(phi) * math.sin(delta)) / (
                math.cos(phi) * math.cos(delta)
            )
            if abs(cos_ha) > 1:  # polar day or night: the sun never crosses that altitude
                return None
            hour_angle = math.degrees(math.acos(cos_ha))
        minutes = 720 - 4 * lon - eq_time + 4 * direction * hour_angle
    return datetime.combine(day, time(), UTC) + timedelta(minutes=minutes)
