"""When periodic tasks are due: interval, crontab and solar schedules.

Pure functions of time, no I/O. Every schedule answers one question,
``next_after(last)``: the first due time strictly after ``last``. All datetimes are
timezone-aware; a naive one raises ``ValueError``. Compare the results in UTC (or
with ``.timestamp()``): Python compares two datetimes that share a ``ZoneInfo`` by
their wall-clock fields, which is wrong across a fall-back.

Daylight saving: crontab fields are wall-clock times, read in the crontab's ``tz``
or, when that is None, in the timezone of the datetime passed in (the scheduler
passes its own timezone). A wall time that does not exist (the spring-forward gap)
is due once, at the first instant after the gap; a wall time that occurs twice
(fall-back) is due once, at its first occurrence. So a daily 02:30 job in New York
runs at 03:00 EDT on the spring-forward day, an hourly job runs once at 01:00 on
the fall-back night (not again an hour later) and never twice. ``every`` counts
real elapsed time and ignores DST; ``solar`` events are absolute instants.
"""

from __future__ import annotations

import abc
import calendar
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any, ClassVar, TypeAlias, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from taskq.errors import ConfigurationError, did_you_mean
from taskq.solar import SOLAR_EVENTS, solar_event_utc

S = TypeVar("S", bound="Schedule")

UTC = timezone.utc


def _utc(value: datetime, name: str = "datetime") -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} must be timezone-aware, got naive {value.isoformat()}; "
            "attach a zone, e.g. value.replace(tzinfo=timezone.utc)"
        )
    return value.astimezone(UTC)


def _zone_of(value: datetime) -> tzinfo:
    _utc(value)
    assert value.tzinfo is not None  # checked by _utc
    return value.tzinfo


class Schedule(abc.ABC):
    """A rule for when a periodic task is due.

    Subclasses implement ``next_after``, ``to_dict`` and ``_from_fields``; two
    schedules are equal when their type and ``to_dict()`` are.
    """

    type_name: ClassVar[str]

    @abc.abstractmethod
    def next_after(self, last: datetime) -> datetime:
        """The first due time strictly after ``last``.

        Raises:
            ValueError: ``last`` is naive.
        """

    def latest_due(self, last: datetime, now: datetime) -> datetime | None:
        """The latest due time in ``(last, now]``, or None when nothing is due.

        The scheduler runs an entry once for this time however many runs were
        missed. This default walks ``next_after`` from ``last``; subclasses jump.
        """
        due = self.next_after(last)
        if _utc(due) > _utc(now, "now"):
            return None
        while _utc(following := self.next_after(due)) <= _utc(now):
            due = following
        return due

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe mapping with a ``"type"`` key that ``from_dict`` reads back."""

    @classmethod
    @abc.abstractmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Schedule:
        """Build from ``to_dict()`` output minus its ``"type"`` key."""

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """Rebuild a schedule from ``to_dict()`` output (or a config file's mapping).

        ``Schedule.from_dict`` accepts every type; ``crontab.from_dict`` only crontabs.

        Raises:
            ConfigurationError: unknown type, missing or unknown keys, bad values.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"A schedule mapping is needed, got {data!r}.")
        kind = data.get("type")
        target = _TYPES.get(kind) if isinstance(kind, str) else None
        if target is None:
            hint = did_you_mean(kind, _TYPES) if isinstance(kind, str) else ""
            raise ConfigurationError(
                f"Unknown schedule type {kind!r} in {dict(data)!r}.{hint} "
                f"Known: {', '.join(sorted(_TYPES))}."
            )
        schedule = target._from_fields({k: v for k, v in data.items() if k != "type"})
        if not isinstance(schedule, cls):
            raise ConfigurationError(f"Expected a {cls.type_name} schedule, got type {kind!r}.")
        return schedule

    def _identity(self) -> tuple[Any, ...]:
        return tuple(sorted(self.to_dict().items()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return type(self) is type(other) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((type(self), self._identity()))


def _check_keys(
    kind: str, fields: Mapping[str, Any], required: set[str], allowed: set[str]
) -> None:
    unknown = set(fields) - allowed
    missing = required - set(fields)
    if unknown or missing:
        problem = (
            f"unknown keys {sorted(unknown)}" if unknown else f"missing keys {sorted(missing)}"
        )
        raise ConfigurationError(
            f"{kind} schedule {dict(fields)!r}: {problem}. Keys: type, {', '.join(sorted(allowed))}."
        )


def _latest_on_grid(schedule: Schedule, last: datetime, now: datetime) -> datetime | None:
    """``latest_due`` for schedules whose due times do not depend on ``last``.

    Probes back from ``now`` in doubling windows, so a long outage costs a few
    calls instead of one per missed run.
    """
    first = schedule.next_after(last)
    last_utc, now_utc = _utc(last), _utc(now, "now")
    if _utc(first) > now_utc:
        return None
    found, window = first, timedelta(minutes=1)
    while now_utc - window > last_utc:
        probe = schedule.next_after((now_utc - window).astimezone(_zone_of(last)))
        if _utc(probe) <= now_utc:
            found = probe
            break
        window *= 2
    while _utc(following := schedule.next_after(found)) <= now_utc:
        found = following
    return found


class every(Schedule):  # noqa: N801 - lowercase like crontab and Celery's schedule names
    """Due every ``interval`` of real elapsed time (DST changes nothing).

    Args:
        interval: seconds (int or float) or a timedelta; must be positive.
    """

    type_name = "every"

    def __init__(self, interval: float | timedelta) -> None:
        if isinstance(interval, timedelta):
            seconds = interval.total_seconds()
        elif isinstance(interval, (int, float)) and not isinstance(interval, bool):
            seconds = float(interval)
        else:
            raise ConfigurationError(
                f"every() needs seconds or a timedelta, got {interval!r} ({type(interval).__name__})."
            )
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigurationError(f"every() needs a positive interval, got {interval!r}.")
        self.interval = timedelta(seconds=seconds)

    def next_after(self, last: datetime) -> datetime:
        # Arithmetic in UTC: adding to a ZoneInfo datetime would add wall-clock time.
        return (_utc(last, "last") + self.interval).astimezone(last.tzinfo)

    def latest_due(self, last: datetime, now: datetime) -> datetime | None:
        elapsed = _utc(now, "now") - _utc(last, "last")
        if elapsed < self.interval:
            return None
        return (_utc(last) + (elapsed // self.interval) * self.interval).astimezone(last.tzinfo)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "seconds": self.interval.total_seconds()}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> every:
        _check_keys(cls.type_name, fields, {"seconds"}, {"seconds"})
        return cls(fields["seconds"])

    def __repr__(self) -> str:
        return f"<every: {self.interval.total_seconds():g} seconds>"


# -- crontab ----------------------------------------------------------------------------

_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTHS = tuple(name.lower() for name in calendar.month_name[1:])
_DAY_NAMES = {**{d: i for i, d in enumerate(_DAYS)}, **{d[:3]: i for i, d in enumerate(_DAYS)}}
_MONTH_NAMES = {
    **{m: i for i, m in enumerate(_MONTHS, 1)},
    **{m[:3]: i for i, m in enumerate(_MONTHS, 1)},
}
# field: (lowest, highest accepted, names); day_of_week accepts 7 for Sunday as Unix cron does.
_CRON_FIELDS: dict[str, tuple[int, int, dict[str, int]]] = {
    "minute": (0, 59, {}),
    "hour": (0, 23, {}),
    "day_of_week": (0, 7, _DAY_NAMES),
    "day_of_month": (1, 31, {}),
    "month_of_year": (1, 12, _MONTH_NAMES),
}
CronSpec: TypeAlias = "int | str | Iterable[int]"


def _cron_error(field: str, spec: object, reason: str) -> ConfigurationError:
    low, high, names = _CRON_FIELDS[field]
    extra = f" or names ({', '.join(k for k in names if len(k) == 3)})" if names else ""
    return ConfigurationError(
        f"crontab {field}={spec!r}: {reason}. Use *, numbers {low}-{high}{extra}, "
        "ranges a-b, steps */n or a-b/n, and lists a,b,c."
    )


def _cron_number(field: str, spec: object, token: str) -> int:
    low, high, names = _CRON_FIELDS[field]
    text = token.strip().lower()
    if text.startswith("-") and text[1:].isdigit():
        raise _cron_error(field, spec, f"{token} is out of range")
    if text.isdigit():
        value = int(text)
    elif text in names:
        value = names[text]
    else:
        raise _cron_error(
            field, spec, f"{token!r} is not a number" + (" or a name" if names else "")
        )
    if not low <= value <= high:
        raise _cron_error(field, spec, f"{value} is out of range")
    return value


def _cron_part(field: str, spec: str, part: str) -> list[int]:
    low, high, _ = _CRON_FIELDS[field]
    base, _, step_text = part.partition("/")
    step = 1
    if step_text or part.endswith("/"):
        if not step_text.isdigit() or int(step_text) < 1:
            raise _cron_error(
                field, spec, f"step {step_text!r} in {part!r} is not a positive number"
            )
        step = int(step_text)
        if base != "*" and "-" not in base:
            raise _cron_error(field, spec, f"a step needs * or a range before it, got {part!r}")
    if base == "*":
        values = list(range(low, high + 1))
    elif "-" in base:
        first, _, last = base.partition("-")
        start, end = _cron_number(field, spec, first), _cron_number(field, spec, last)
        # Celery wraps a reversed range past the maximum: fri-mon is fri,sat,sun,mon.
        values = (
            list(range(start, end + 1))
            if start <= end
            else list(range(start, high + 1)) + list(range(low, end + 1))
        )
    else:
        values = [_cron_number(field, spec, base)]
    return values[::step]


def _parse_cron_field(field: str, spec: CronSpec) -> tuple[str, frozenset[int]]:
    """``(text for repr and to_dict, the matching values)`` for one crontab field."""
    if isinstance(spec, str):
        text = spec.strip().replace(" ", "")
        if not text:
            raise _cron_error(field, spec, "it is empty")
        values = [v for part in text.split(",") for v in _cron_part(field, spec, part)]
    elif isinstance(spec, Iterable) or (isinstance(spec, int) and not isinstance(spec, bool)):
        items = [spec] if isinstance(spec, int) else list(spec)
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise _cron_error(field, spec, "give an int or a non-empty iterable of ints")
        values = [_cron_number(field, spec, str(v)) for v in items]
        text = ",".join(str(v) for v in sorted(set(items)))
    else:
        raise _cron_error(field, spec, f"a {type(spec).__name__} is not a crontab field")
    return text, frozenset(0 if field == "day_of_week" and v == 7 else v for v in values)


def _as_zone(tz: str | tzinfo | None) -> tzinfo | None:
    if tz is None or isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"Unknown timezone {tz!r} for crontab; use an IANA name such as 'Europe/London'."
        ) from None


def _wall_to_instant(wall: datetime, zone: tzinfo) -> datetime:
    """The instant a naive wall time means in ``zone``, by the module's DST rule."""
    first = wall.replace(tzinfo=zone, fold=0)  # fold=0: the first of a repeated wall time
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In the spring-forward gap: fold=0 and fold=1 land either side of the transition;
    # bisect (whole seconds, where transitions fall) for the first instant after it.
    lo, hi = sorted(int(wall.replace(tzinfo=zone, fold=f).timestamp()) for f in (0, 1))
    after = datetime.fromtimestamp(hi, UTC).astimezone(zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, UTC).astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC).astimezone(zone)


class crontab(Schedule):  # noqa: N801 - Celery's name
    """Due at wall-clock minutes that match every field, Celery's crontab syntax.

    Each field takes ``*``, a number, a range ``1-5``, steps ``*/15`` or ``1-30/5``,
    a list ``1,15,30`` (mixing all of these), an int, or an iterable of ints.
    ``day_of_week`` is 0-6 with Sunday 0 (7 is Sunday too) or names ``mon``/``monday``;
    ``month_of_year`` is 1-12 or names ``jan``/``january``.

    As in Celery, and unlike Unix cron, a day must match BOTH ``day_of_month`` and
    ``day_of_week``: ``crontab(0, 9, day_of_week="mon", day_of_month="1-7")`` is
    09:00 on the first Monday of each month.

    Args:
        tz: the zone the fields are read in (IANA name or tzinfo). None reads them in
            the zone of the datetime given to ``next_after``: the scheduler's zone.

    Raises:
        ConfigurationError: a field is malformed, out of range, or can never match.
    """

    type_name = "crontab"
    _FIELD_NAMES = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")

    def __init__(
        self,
        minute: CronSpec = "*",
        hour: CronSpec = "*",
        day_of_week: CronSpec = "*",
        day_of_month: CronSpec = "*",
        month_of_year: CronSpec = "*",
        tz: str | tzinfo | None = None,
    ) -> None:
        specs = (minute, hour, day_of_week, day_of_month, month_of_year)
        parsed = {
            name: _parse_cron_field(name, s)
            for name, s in zip(self._FIELD_NAMES, specs, strict=True)
        }
        self._texts = {name: text for name, (text, _) in parsed.items()}
        self.minutes = sorted(parsed["minute"][1])
        self.hours = sorted(parsed["hour"][1])
        self.days_of_week = parsed["day_of_week"][1]
        self.days_of_month = parsed["day_of_month"][1]
        self.months_of_year = parsed["month_of_year"][1]
        self.tz = _as_zone(tz)
        # Without this check an impossible date (30 February) would search forever.
        if not any(
            day <= calendar.monthrange(2000, month)[1]  # 2000 is a leap year: Feb has 29
            for month in self.months_of_year
            for day in self.days_of_month
        ):
            raise ConfigurationError(
                f"crontab day_of_month={day_of_month!r} month_of_year={month_of_year!r} "
                "never matches a real date."
            )

    def next_after(self, last: datetime) -> datetime:
        zone = self.tz or _zone_of(last)
        last_utc = _utc(last, "last")
        for wall in self._walls_from(last.astimezone(zone).replace(tzinfo=None)):
            instant = _wall_to_instant(wall, zone)
            # Walls at or before ``last`` are skipped: the minute of ``last`` itself, and
            # the whole repeated hour when ``last`` is in its second pass.
            if _utc(instant) > last_utc:
                return instant
        raise AssertionError("unreachable: the constructor rejects crontabs that never match")

    def latest_due(self, last: datetime, now: datetime) -> datetime | None:
        return _latest_on_grid(self, last, now)

    def _walls_from(self, start: datetime) -> Iterator[datetime]:
        """Matching wall-clock minutes (naive) at or after ``start``, ascending."""
        start = start.replace(second=0, microsecond=0)
        year, month = start.year, start.month
        for _ in range(12 * 401):  # the Gregorian calendar repeats every 400 years
            if month in self.months_of_year:
                for day in range(1, calendar.monthrange(year, month)[1] + 1):
                    current = date(year, month, day)
                    if current < start.date() or not self._day_matches(current):
                        continue
                    for hour in self.hours:
                        for minute in self.minutes:
                            wall = datetime.combine(current, time(hour, minute))
                            if wall >= start:
                                yield wall
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)

    def _day_matches(self, day: date) -> bool:
        return day.day in self.days_of_month and day.isoweekday() % 7 in self.days_of_week

    def _zone_name(self) -> str | None:
        if isinstance(self.tz, ZoneInfo):
            return self.tz.key
        return "UTC" if self.tz is UTC else None

    def _identity(self) -> tuple[Any, ...]:
        # to_dict() refuses zones without a name; equality must not.
        return (tuple(self._texts.items()), self._zone_name() or self.tz)

    def to_dict(self) -> dict[str, Any]:
        name = self._zone_name()
        if name is None and self.tz is not None:
            raise ConfigurationError(
                f"crontab tz {self.tz!r} has no IANA name to store; pass a name like 'Europe/Paris'."
            )
        return {"type": self.type_name, **self._texts, "tz": name}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> crontab:
        _check_keys(cls.type_name, fields, set(), {*cls._FIELD_NAMES, "tz"})
        return cls(**fields)

    def __repr__(self) -> str:
        t = self._texts
        return (
            f"<crontab: {t['minute']} {t['hour']} {t['day_of_month']} {t['month_of_year']} "
            f"{t['day_of_week']} (m/h/dM/MY/d)>"
        )


# -- solar ------------------------------------------------------------------------------


def _coordinate(name: str, value: object, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"solar {name} must be a number, got {value!r}.")
    if not -limit <= value <= limit:
        raise ConfigurationError(f"solar {name}={value!r} is out of range -{limit:g}..{limit:g}.")
    return float(value)


class solar(Schedule):  # noqa: N801 - Celery's name
    """Due at a solar event at a place, e.g. ``solar("sunset", 51.5074, -0.1278)``.

    Events (Celery's names): sunrise, sunset, solar_noon, dawn_civil, dawn_nautical,
    dawn_astronomical, dusk_civil, dusk_nautical, dusk_astronomical. Sunrise and
    sunset are at -0.833 degrees altitude; civil, nautical and astronomical twilight
    at -6, -12 and -18. Times come from NOAA's algorithm (within about a minute
    below the polar circles). Days on which the event does not happen (polar day or
    night) are skipped.

    Raises:
        ConfigurationError: unknown event; lat outside -90..90 or lon outside -180..180.
    """

    type_name = "solar"

    def __init__(self, event: str, lat: float, lon: float) -> None:
        if event not in SOLAR_EVENTS:
            raise ConfigurationError(
                f"Unknown solar event {event!r}.{did_you_mean(str(event), SOLAR_EVENTS)} "
                f"Known: {', '.join(SOLAR_EVENTS)}."
            )
        self.event = event
        self.lat = _coordinate("lat", lat, 90)
        self.lon = _coordinate("lon", lon, 180)

    def next_after(self, last: datetime) -> datetime:
        last_utc = _utc(last, "last")
        # Start a day early: west of Greenwich an event of yesterday's solar day can
        # fall after 00:00 UTC today.
        day = last_utc.date() - timedelta(days=1)
        for _ in range(2 * 366):
            instant = solar_event_utc(self.event, self.lat, self.lon, day)
            if instant is not None and instant > last_utc:
                return instant.astimezone(last.tzinfo)
            day += timedelta(days=1)
        raise ConfigurationError(
            f"{self!r}: the event does not happen within two years; pick another event or place."
        )

    def latest_due(self, last: datetime, now: datetime) -> datetime | None:
        return _latest_on_grid(self, last, now)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "event": self.event, "lat": self.lat, "lon": self.lon}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> solar:
        _check_keys(cls.type_name, fields, {"event", "lat", "lon"}, {"event", "lat", "lon"})
        return cls(fields["event"], fields["lat"], fields["lon"])

    def __repr__(self) -> str:
        return f"<solar: {self.event} at latitude {self.lat}, longitude {self.lon}>"


_TYPES: dict[str, type[Schedule]] = {cls.type_name: cls for cls in (every, crontab, solar)}


def as_schedule(value: object) -> Schedule:
    """Coerce a ``beat_schedule`` value: a Schedule, seconds, a timedelta or a mapping.

    Raises:
        ConfigurationError: anything else, or a bad mapping.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
        return every(value)
    if isinstance(value, Mapping):
        return Schedule.from_dict(value)
    raise ConfigurationError(
        f"A schedule must be seconds, a timedelta, crontab(...), solar(...), every(...) "
        f'or a mapping with a "type" key; got {value!r}.'
    )
