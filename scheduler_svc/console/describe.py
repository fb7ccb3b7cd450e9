"""Schedules in plain English for the console: `describe`.

The words are built from the field values croniter expands, the ones the service
fires by, and say only what those values mean exactly. A shape they do not cover
(L, W, #, a seconds field other than 0, both day fields restricted, uneven steps,
long lists) is shown as the expression itself: "cron 0 9 1 * 1 (UTC)". Cron times
are wall-clock times in the job's zone; how they meet DST gaps and repeats is
scheduler_svc.schedule's business. Pure: no clock, no I/O.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta

from scheduler_svc.schedule import Schedule, ScheduleError, parse
from scheduler_svc.schedule.parse import compiled

_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MONTHS = (
    "",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
# February counts 28: "day 29 of every month" would promise a fire in every February.
_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_WEEKDAYS = (1, 2, 3, 4, 5)
_SHORT = 3  # up to this many times a day, a list reads better than a period
_MAX_LIST = 6  # past this many values, the expression reads better than the words
_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))

Values = tuple[int, ...]


@functools.lru_cache(maxsize=4096)
def describe(schedule: str, timezone: str) -> str:
    """The schedule in plain English with its zone; the expression itself when the
    words could not say it exactly, and the text unchanged when it is not a schedule.
    Remembered by (schedule, zone): a page of jobs mostly repeats a few schedules, and
    parsing each again cost more than the rest of the page."""
    try:
        parsed = parse(schedule)
    except ScheduleError:
        return schedule
    if parsed.every is not None:
        return "every " + _duration(parsed.every)
    if parsed.at is not None:
        return "once, at " + _instant(parsed.at)
    words = _cron(parsed) or f"cron {parsed.text}"
    return f"{words} ({timezone})" if timezone else words


def _duration(every: timedelta) -> str:
    left = int(every.total_seconds())
    parts: list[tuple[int, str]] = []
    for unit, size in _UNITS:
        count, left = divmod(left, size)
        if count:
            parts.append((count, unit if count == 1 else unit + "s"))
    if len(parts) == 1 and parts[0][0] == 1:
        return parts[0][1]
    return " ".join(f"{count} {unit}" for count, unit in parts)


def _instant(at: datetime) -> str:
    fraction = f".{at.microsecond:06d}" if at.microsecond else ""
    return at.strftime("%Y-%m-%d %H:%M:%S") + fraction + " UTC"


def _cron(schedule: Schedule) -> str | None:
    prototype = compiled(schedule).prototype
    if prototype.nth_weekday_of_month or prototype.nearest_weekday:
        return None  # '#' and 'W'
    fields: list[list[object]] = prototype.expanded
    # croniter keeps the seconds field last, whichever end it was written at.
    seconds = _values(fields[5], 0, 59) if schedule.has_seconds else (0,)
    minutes, hours = _values(fields[0], 0, 59), _values(fields[1], 0, 23)
    days, months, weekdays = (
        _values(fields[2], 1, 31),
        _values(fields[3], 1, 12),
        _values(fields[4], 0, 6),
    )
    if (
        seconds is None
        or minutes is None
        or hours is None
        or days is None
        or months is None
        or weekdays is None
    ):
        return None  # 'L'
    # croniter's rule: when neither day field is '*' a day matching either one fires.
    if fields[2] != ["*"] and fields[4] != ["*"]:
        return None
    time = _time(seconds, minutes, hours)
    if time is None:
        return None
    at, words = time
    in_months = "" if len(months) == 12 else _join([_MONTHS[m] for m in months])
    if len(weekdays) < 7:
        if at:
            lead = "every " + _weekdays(weekdays, plural=False) + " at " + words
            return lead + (f" in {in_months}" if in_months else "")
        return f"{words} on {_weekdays(weekdays, plural=True)}" + (
            f" in {in_months}" if in_months else ""
        )
    if len(days) < 31:
        if days[-1] > min(_MONTH_DAYS[m] for m in months):
            return None  # some month has no such day
        if len(days) > _MAX_LIST and not _contiguous(days):
            return None
        where = f"on {_month_days(days)} of {in_months or 'every month'}"
        return f"at {words} {where}" if at else f"{words} {where}"
    if at:
        return f"every day at {words}" + (f" in {in_months}" if in_months else "")
    return words + (f" in {in_months}" if in_months else "")


def _values(field: Sequence[object], low: int, high: int) -> Values | None:
    """The sorted values of an expanded field, None if it holds anything but numbers."""
    if list(field) == ["*"]:
        return tuple(range(low, high + 1))
    numbers = {v for v in field if isinstance(v, int) and not isinstance(v, bool)}
    if len(numbers) != len(set(field)):
        return None
    return tuple(sorted(numbers))


def _time(seconds: Values, minutes: Values, hours: Values) -> tuple[bool, str] | None:
    """(True, "09:00 and 17:30") for times of day, (False, "every 5 minutes") for a
    period, or None if neither says it exactly."""
    all_hours = len(hours) == 24
    if seconds != (0,):
        step = _period(seconds, 60)
        if len(minutes) == 60 and all_hours and step is not None and seconds[0] == 0:
            return False, _every(step, "second")
        return None
    minute_step = _period(minutes, 60)
    if all_hours:
        if len(minutes) == 1:
            return False, f"every hour at minute {minutes[0]}"
        if minute_step is not None and minutes[0] == 0:
            return False, _every(minute_step, "minute")
        if minute_step is None and len(minutes) <= _MAX_LIST:
            return False, "every hour at minutes " + _join([str(m) for m in minutes])
    times = [_clock(h, m) for h in hours for m in minutes]
    if len(times) <= _SHORT:
        return True, _join(times)
    span = f" from {times[0]} to {times[-1]}"
    hour_step = _step(hours)
    if len(minutes) == 1 and hour_step is not None:
        return False, _every(hour_step, "hour") + span
    if minute_step is not None and (len(hours) == 1 or hour_step == 1):
        return False, _every(minute_step, "minute") + span
    if len(times) <= _MAX_LIST:
        return True, _join(times)
    return None


def _period(values: Values, size: int) -> int | None:
    """The step of values that repeat evenly round a field of `size` (0, 15, 30, 45 of
    an hour), so that the gap past the last one to the next first one is a step too."""
    step = _step(values)
    if step is None or size % step or values[0] >= step or len(values) != size // step:
        return None
    return step


def _step(values: Values) -> int | None:
    """The common difference of two or more evenly spaced values."""
    if len(values) < 2:
        return None
    steps = {b - a for a, b in itertools.pairwise(values)}
    return steps.pop() if len(steps) == 1 else None


def _every(step: int, unit: str) -> str:
    return f"every {unit}" if step == 1 else f"every {step} {unit}s"


def _clock(hour: int, minute: int) -> str:
    return f"{hour:02d}:{minute:02d}"


def _contiguous(values: Values) -> bool:
    return len(values) >= _SHORT and _step(values) == 1


def _weekdays(weekdays: Values, *, plural: bool) -> str:
    if weekdays == _WEEKDAYS:
        return "weekdays" if plural else "weekday"
    # Monday first: "Saturday and Sunday" rather than "Sunday and Saturday".
    names = [
        _DAYS[d] + ("s" if plural else "") for d in sorted(weekdays, key=lambda d: (d - 1) % 7)
    ]
    return _join(names)


def _month_days(days: Values) -> str:
    if len(days) == 1:
        return f"day {days[0]}"
    if _contiguous(days):
        return f"days {days[0]} to {days[-1]}"
    return "days " + _join([str(d) for d in days])


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]
