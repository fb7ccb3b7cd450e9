"""Parsing of job schedules and computation of their fire times.

A schedule is a cron expression (5 fields, or 6 with a leading seconds field), a
macro (``@daily`` ...), ``@every <duration>`` or ``@at <RFC 3339 timestamp>``.

Cron expressions and macros are read in the job's IANA time zone:

* a wall time skipped by a spring-forward gap fires once, at the first instant
  after the gap (several skipped wall times collapse into that one fire);
* a wall time repeated by a fall-back fires once, at its first occurrence;
* except when the hour field covers every hour (``*``, ``*/1``, ``0-23``): such a
  job fires at every instant of real time whose wall clock matches, so skipped
  wall times do not fire and repeated ones fire twice.

croniter only does calendar arithmetic here, on naive wall times; mapping wall
times to instants is done with zoneinfo. zoneinfo does not expose transition
instants, so they are found by probing UTC offsets, which relies on a zone never
changing its offset twice within ``_PROBE`` (3 days; in tzdata's 1970-2100 data
the closest changes are 6.9 days apart).

``@every`` is real elapsed time; ``@at`` fires once. The module reads no clock
and does no I/O beyond what zoneinfo does to load a zone.
"""

from __future__ import annotations

import copy
import functools
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

__all__ = [
    "PREVIEW_HORIZON",
    "DueTicks",
    "MisfirePolicy",
    "Schedule",
    "ScheduleError",
    "check_min_interval",
    "due_ticks",
    "first_fire",
    "next_fire",
    "parse",
    "parse_timezone",
    "preview",
]

MisfirePolicy = Literal["run_once", "skip", "run_all"]

_MAX_TEXT = 512
_MAX_ZONE_NAME = 64
_MAX_EVERY = timedelta(days=366)
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_FIELD_RE = re.compile(r"[0-9A-Za-z*?/,#-]+", re.ASCII)
_HASHED_RE = re.compile(r"[hr](\(|/|$)", re.ASCII | re.IGNORECASE)
# croniter reads an equal-bounds range such as "9-9" as the whole field.
_EQUAL_RANGE_RE = re.compile(r"([^-/]+)-([^-/]+)(/\d+)?", re.ASCII)
_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?",
    re.ASCII,
)
_ZONE_RE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*", re.ASCII)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)
_PROBE = timedelta(days=3)
# More than any change of a zone's offset, and than _PROBE.
_LEAP = 2 * _PROBE
# A valid cron fires at least every 8 years; stepping _PROBE at a time that is
# ~1000 steps, so this only stops runaway loops.
_MAX_STEPS = 20_000
_CRON_REFERENCE = datetime(2000, 1, 1)
_INTERVAL_REFERENCE = datetime(2024, 1, 1, tzinfo=UTC)
_INTERVAL_SAMPLES = 300
_INTERVAL_HORIZON = timedelta(days=400)
# How far ahead preview looks: see preview.
PREVIEW_HORIZON = timedelta(days=100 * 365 + 24)
_EXACT_DUE = 256
_COUNT_STRATA = 16
_COUNT_BUDGET = 64


class ScheduleError(ValueError):
    """An invalid schedule or time zone; ``str(e)`` is a one-sentence user-facing message."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule; `cron` holds macros expanded, `at` is UTC."""

    text: str
    kind: Literal["cron", "every", "at"]
    cron: str | None = None
    has_seconds: bool = False
    every: timedelta | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DueTicks:
    """What a scheduler pass does with one job; see due_ticks."""

    ticks: list[datetime]
    next_run_at: datetime | None
    skipped: int


# --- parsing -----------------------------------------------------------------


def parse(text: str) -> Schedule:
    """Parse a schedule string; raise ScheduleError with a user-facing message if invalid."""
    s = text.strip()
    if not s:
        raise ScheduleError("schedule must not be empty")
    if len(s) > _MAX_TEXT:
        raise ScheduleError(f"schedule is longer than {_MAX_TEXT} characters")
    if not s.startswith("@"):
        return _parse_cron(s, s)
    keyword, _, arg = s.partition(" ")
    keyword, arg = keyword.lower(), arg.strip()
    if keyword in _MACROS:
        if arg:
            raise ScheduleError(f"'{keyword}' takes no argument")
        return _parse_cron(s, _MACROS[keyword])
    if keyword == "@every":
        return Schedule(text=s, kind="every", every=_parse_every(s, arg))
    if keyword == "@at":
        return Schedule(text=s, kind="at", at=_parse_at(arg))
    raise ScheduleError(f"unknown schedule keyword '{keyword}'")


def _parse_cron(text: str, expr: str) -> Schedule:
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ScheduleError("cron expression must have 5 or 6 fields")
    has_seconds = len(fields) == 6
    names = (("second",) if has_seconds else ()) + _FIELD_NAMES
    for index, (name, field) in enumerate(zip(names, fields, strict=True)):
        _check_field(name, field, _isolate(fields, index), has_seconds)
    cron = " ".join(fields)
    try:
        compiled = _compile(cron, has_seconds)
    except CroniterError:
        raise ScheduleError(f"invalid cron expression '{cron}'") from None
    if compiled.first_wall(_CRON_REFERENCE, inclusive=True) is None:
        raise ScheduleError(f"cron expression '{cron}' never matches a date")
    return Schedule(text=text, kind="cron", cron=cron, has_seconds=has_seconds)


def _isolate(fields: list[str], index: int) -> str:
    return " ".join(f if i == index else "*" for i, f in enumerate(fields))


def _check_field(name: str, field: str, isolated: str, has_seconds: bool) -> None:
    if not _FIELD_RE.fullmatch(field):
        raise ScheduleError(f"{name} field '{field}' contains invalid characters")
    for token in field.split(","):
        if _HASHED_RE.match(token):
            raise ScheduleError(f"hashed and random values ('{token}') are not supported")
        equal = _EQUAL_RANGE_RE.fullmatch(token)
        if equal and equal[1].lower() == equal[2].lower():
            raise ScheduleError(
                f"range '{token}' in the {name} field has equal bounds; write '{equal[1]}'"
            )
    try:
        croniter.expand(isolated, second_at_beginning=has_seconds)
    except CroniterError:
        raise ScheduleError(f"invalid {name} field '{field}'") from None


def _parse_every(text: str, arg: str) -> timedelta:
    if not arg:
        raise ScheduleError("'@every' needs a duration such as 30s, 5m or 1h30m")
    match = _DURATION_RE.fullmatch(arg.lower())
    if match is None or not any(match.groups()):
        raise ScheduleError(f"invalid duration '{arg}'; use units d, h, m and s, e.g. 1h30m")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total < 1:
        raise ScheduleError(f"'{text}' is shorter than 1 second")
    if total > _MAX_EVERY.total_seconds():
        raise ScheduleError(f"'{text}' is longer than {_MAX_EVERY.days} days")
    return timedelta(seconds=total)


def _parse_at(arg: str) -> datetime:
    match = _RFC3339_RE.fullmatch(arg)
    if match is None:
        raise ScheduleError(
            f"invalid '@at' timestamp '{arg}'; expected RFC 3339 such as 2025-06-01T09:00:00Z"
        )
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if not zulu and not sign:
        raise ScheduleError(
            f"'@at' timestamp '{arg}' has no UTC offset; add 'Z' or an offset such as +02:00"
        )
    try:
        offset = timedelta(0) if zulu else _signed_offset(sign, int(off_h), int(off_m))
        local = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=timezone(offset),
        )
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ScheduleError(f"'@at' timestamp '{arg}' is not a valid date and time") from None


def _signed_offset(sign: str, hours: int, minutes: int) -> timedelta:
    if minutes > 59:
        raise ValueError("offset minutes out of range")
    offset = timedelta(hours=hours, minutes=minutes)
    return -offset if sign == "-" else offset


def parse_timezone(name: str) -> ZoneInfo:
    """Return the IANA zone called `name`; raise ScheduleError if there is none."""
    if not name:
        raise ScheduleError("time zone must not be empty")
    if len(name) > _MAX_ZONE_NAME:
        raise ScheduleError(f"time zone name is longer than {_MAX_ZONE_NAME} characters")
    if not _ZONE_RE.fullmatch(name):
        raise ScheduleError(f"invalid time zone name '{name}'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"unknown time zone '{name}'") from None


# --- fire times ----------------------------------------------------------------


def next_fire(schedule: Schedule, tz: ZoneInfo, after: datetime) -> datetime | None:
    """Return the first fire time strictly after `after` (UTC), or None if there is none."""
    after = _utc(after)
    if schedule.kind == "every":
        try:
            return after + _every(schedule)
        except OverflowError:
            return None  # past the end of the calendar
    if schedule.kind == "at":
        at = _at(schedule)
        return at if at > after else None
    return _next_cron(_compiled(schedule), tz, after)


def first_fire(schedule: Schedule, tz: ZoneInfo, now: datetime) -> datetime | None:
    """Return a new or resumed job's next_run_at: an @at's time (even if past), else next_fire."""
    if schedule.kind == "at":
        return _at(schedule)
    return next_fire(schedule, tz, now)


def preview(
    schedule: Schedule,
    tz: ZoneInfo,
    after: datetime,
    count: int,
    within: timedelta = PREVIEW_HORIZON,
) -> list[datetime]:
    """Return up to `count` successive fire times strictly after `after` (UTC), and no
    later than `within` after it.

    The horizon bounds the work: croniter's search costs time in proportion to the
    years it passes, and a schedule may fire once in decades (``0 0 29 2 1#5``).
    """
    try:
        until = _utc(after) + within
    except OverflowError:
        until = datetime.max.replace(tzinfo=UTC)
    fires: list[datetime] = []
    while len(fires) < count:
        found = next_fire(schedule, tz, fires[-1] if fires else after)
        if found is None or found > until:
            break
        fires.append(found)
    return fires


def check_min_interval(schedule: Schedule, tz: ZoneInfo, min_interval_s: float) -> None:
    """Raise ScheduleError if the schedule can fire more often than every `min_interval_s` seconds.

    For cron this is a sampled check: the smallest gap among the first few hundred
    fires (within ~400 days) after a fixed reference instant, so gaps that only
    occur around DST transitions or rare dates may go unnoticed.
    """
    if schedule.kind == "at":
        return
    if schedule.kind == "every":
        gap = _every(schedule)
    elif min_interval_s <= (1 if schedule.has_seconds else 60):
        return  # nothing fires sooner than its field's resolution: no need to sample
    else:
        fires = preview(
            schedule, tz, _INTERVAL_REFERENCE, _INTERVAL_SAMPLES, within=_INTERVAL_HORIZON
        )
        if len(fires) < 2:
            return
        gap = min(b - a for a, b in itertools.pairwise(fires))
    if gap.total_seconds() < min_interval_s:
        raise ScheduleError(
            f"schedule can fire {_seconds(gap.total_seconds())} apart, "
            f"more often than the minimum interval of {_seconds(min_interval_s)}"
        )


def _seconds(value: float) -> str:
    return f"{value:g} second" + ("" if value == 1 else "s")


def _utc(moment: datetime) -> datetime:
    if moment.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return moment.astimezone(UTC)


def _every(schedule: Schedule) -> timedelta:
    if schedule.every is None:
        raise ValueError("an @every schedule needs its duration")
    return schedule.every


def _at(schedule: Schedule) -> datetime:
    if schedule.at is None:
        raise ValueError("an @at schedule needs its timestamp")
    return _utc(schedule.at)


# --- cron in a time zone -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cron:
    # croniter keeps its cursor in the instance, so each query works on a copy
    # (the cached prototype may be shared between threads).
    prototype: Any
    step: timedelta
    all_hours: bool

    def first_wall(self, lower: datetime, *, inclusive: bool) -> datetime | None:
        """The first matching naive wall time after `lower` (or at it, if inclusive)."""
        # croniter goes through float timestamps, so hand it step-aligned times only.
        floor = lower - (lower - datetime.min) % self.step
        start = floor - self.step if inclusive and floor == lower else floor
        try:
            found: datetime = copy.copy(self.prototype).get_next(datetime, start)
        except (CroniterBadDateError, OverflowError, ValueError):
            return None  # none before the end of the calendar (dateutil: "year 10000 ...")
        return found


def _compiled(schedule: Schedule) -> _Cron:
    if schedule.cron is None:
        raise ValueError("a cron schedule needs its expression")
    return _compile(schedule.cron, schedule.has_seconds)


@functools.lru_cache(maxsize=1024)
def _compile(expr: str, has_seconds: bool) -> _Cron:
    prototype = croniter(expr, _CRON_REFERENCE, ret_type=datetime, second_at_beginning=has_seconds)
    hours = croniter.expand(expr, second_at_beginning=has_seconds)[0][1]
    return _Cron(prototype, timedelta(seconds=1 if has_seconds else 60), hours == ["*"])


def _offset(tz: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(tz).utcoffset()
    if offset is None:
        raise ValueError(f"time zone {tz} has no UTC offset")
    return offset


def _wall(instant: datetime, offset: timedelta) -> datetime:
    return (instant + offset).replace(tzinfo=None)


def _instant(wall: datetime, offset: timedelta) -> datetime:
    return (wall - offset).replace(tzinfo=UTC)


def _transition(tz: ZoneInfo, start: datetime, end: datetime, offset: timedelta) -> datetime | None:
    """The instant in (start, end] where the offset stops being `offset` (one change at most)."""
    if _offset(tz, end) == offset:
        return None
    # tzdata transitions fall on whole seconds: bisect on integer seconds.
    low = (start - _EPOCH) // _SECOND
    high = -((_EPOCH - end) // _SECOND)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(tz, _EPOCH + middle * _SECOND) == offset:
            low = middle
        else:
            high = middle
    return _EPOCH + high * _SECOND


def _next_cron(cron: _Cron, tz: ZoneInfo, after: datetime) -> datetime | None:
    try:
        return _walk(cron, tz, after)
    except OverflowError:
        return None


def _walk(cron: _Cron, tz: ZoneInfo, after: datetime) -> datetime | None:
    """Walk real time from `after` one constant-offset stretch (or _PROBE) at a time,
    leaping over the stretch between the first probe and the last few before the target."""
    current, offset = after, _offset(tz, after)
    lower, inclusive = _wall(after, offset), False
    if not cron.all_hours and after.astimezone(tz).fold:
        # Inside the second pass over repeated wall times: they fired the first time.
        before = after - _PROBE
        change = _transition(tz, before, after, _offset(tz, before))
        if change is not None:
            lower, inclusive = _wall(change, _offset(tz, before)), True
    wall = cron.first_wall(lower, inclusive=inclusive)
    for _ in range(_MAX_STEPS):
        if wall is None:
            return None
        target = _instant(wall, offset)
        horizon = current + _PROBE
        if target <= horizon and _offset(tz, target) == offset:
            return target
        change = _transition(tz, current, min(target, horizon), offset)
        if change is None:
            current = horizon
            if target - current > _LEAP:
                # An offset change further than _PROBE from `after` and than _LEAP from
                # the target moves no wall time across `wall`: only the offset is left.
                current = target - _LEAP
                offset = _offset(tz, current)
            continue
        new_offset = _offset(tz, change)
        resumed_wall = _wall(change, new_offset)
        if new_offset > offset and wall < resumed_wall:
            if not cron.all_hours:
                return change
            wall = cron.first_wall(resumed_wall, inclusive=True)
        elif new_offset < offset and cron.all_hours:
            # Real time passes the repeated wall times a second time.
            wall = cron.first_wall(resumed_wall, inclusive=True)
        current, offset = change, new_offset
    return None


# --- due ticks -------------------------------------------------------------------


def due_ticks(
    schedule: Schedule,
    tz: ZoneInfo,
    next_run_at: datetime,
    now: datetime,
    policy: MisfirePolicy,
    grace_s: float,
    limit: int = 100,
) -> DueTicks:
    """Return the ticks to run now, the new next_run_at and how many due ticks were not run.

    Due ticks are ``next_run_at`` and the fire times after it up to ``now``. Ticks
    older than ``now - grace_s`` are missed: ``run_all`` runs them, ``run_once``
    only the latest, ``skip`` none. At most ``limit`` ticks run, the latest ones.
    ``len(ticks) + skipped`` is the number of due ticks. For a cron schedule with
    more than 256 due ticks ``skipped`` is an estimate: each of 16 stretches is
    counted up to a budget, then extrapolated at the rate of its first fires up to
    its last fire. That is exact for a steady rate (``*/5 * * * * *``, also across
    DST) and rough for bursty schedules (``* 9-17 * * 1-5``).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if grace_s < 0:
        raise ValueError("grace_s must not be negative")
    if policy not in ("run_once", "skip", "run_all"):
        raise ValueError(f"unknown misfire policy {policy!r}")
    first, now = _utc(next_run_at), _utc(now)
    if first > now:
        return DueTicks([], first, 0)
    cutoff = now - timedelta(seconds=grace_s)
    if schedule.kind == "every":
        return _due_every(_every(schedule), first, now, cutoff, policy, limit)
    if schedule.kind == "at":
        return _due_listed([first], None, cutoff, policy, limit)
    return _due_cron(schedule, tz, first, now, cutoff, policy, limit)


def _select(
    policy: MisfirePolicy,
    limit: int,
    missed: int,
    on_time: int,
    last_missed: Callable[[int], list[datetime]],
    last_on_time: Callable[[int], list[datetime]],
) -> tuple[list[datetime], int]:
    run_on_time = last_on_time(limit) if on_time else []
    room = limit - len(run_on_time)
    wanted = {"run_all": room, "run_once": min(room, 1), "skip": 0}[policy]
    run_missed = last_missed(wanted) if wanted and missed else []
    ticks = run_missed + run_on_time
    return ticks, max(0, missed + on_time - len(ticks))


def _due_listed(
    due: list[datetime],
    next_run_at: datetime | None,
    cutoff: datetime,
    policy: MisfirePolicy,
    limit: int,
) -> DueTicks:
    split = sum(1 for t in due if t < cutoff)
    missed, on_time = due[:split], due[split:]
    ticks, skipped = _select(
        policy,
        limit,
        len(missed),
        len(on_time),
        lambda k: missed[max(0, len(missed) - k) :],
        lambda k: on_time[max(0, len(on_time) - k) :],
    )
    return DueTicks(ticks, next_run_at, skipped)


def _due_every(
    every: timedelta,
    first: datetime,
    now: datetime,
    cutoff: datetime,
    policy: MisfirePolicy,
    limit: int,
) -> DueTicks:
    # Ticks are first + i * every for i in [0, total): arithmetic, never enumeration.
    total = (now - first) // every + 1
    missed = 0 if cutoff <= first else min(total, -((first - cutoff) // every))

    def ticks_in(begin: int, end: int) -> Callable[[int], list[datetime]]:
        return lambda k: [first + i * every for i in range(max(begin, end - k), end)]

    ticks, skipped = _select(
        policy, limit, missed, total - missed, ticks_in(0, missed), ticks_in(missed, total)
    )
    return DueTicks(ticks, first + total * every, skipped)


def _due_cron(
    schedule: Schedule,
    tz: ZoneInfo,
    first: datetime,
    now: datetime,
    cutoff: datetime,
    policy: MisfirePolicy,
    limit: int,
) -> DueTicks:
    due = [first]
    following = next_fire(schedule, tz, first)
    while following is not None and following <= now and len(due) <= _EXACT_DUE:
        due.append(following)
        following = next_fire(schedule, tz, following)
    if following is None or following > now:
        return _due_listed(due, following, cutoff, policy, limit)

    before_cutoff = cutoff - _MICROSECOND

    def last_missed(k: int) -> list[datetime]:
        return _last_due(schedule, tz, first, first, before_cutoff, k)

    def last_on_time(k: int) -> list[datetime]:
        return _last_due(schedule, tz, first, max(first, cutoff), now, k)

    ticks, skipped = _select(
        policy,
        limit,
        _count_due(schedule, tz, first, first, before_cutoff),
        _count_due(schedule, tz, first, max(first, cutoff), now),
        last_missed,
        last_on_time,
    )
    return DueTicks(ticks, next_fire(schedule, tz, now), skipped)


def _last_due(
    schedule: Schedule, tz: ZoneInfo, first: datetime, low: datetime, high: datetime, k: int
) -> list[datetime]:
    """The last `k` due ticks (`first` and the fires after it) within [low, high], ascending."""
    found = _last_fires(schedule, tz, max(first, low - _MICROSECOND), high, k)
    if len(found) < k and low <= first <= high:
        found.insert(0, first)
    return found


def _count_due(
    schedule: Schedule, tz: ZoneInfo, first: datetime, low: datetime, high: datetime
) -> int:
    """How many due ticks lie within [low, high] (an estimate past the per-stretch budget)."""
    if high < low:
        return 0
    start = max(first, low - _MICROSECOND)
    bounds = [start + (high - start) * i / _COUNT_STRATA for i in range(_COUNT_STRATA)]
    return int(low <= first <= high) + sum(
        _count_fires(schedule, tz, a, b) for a, b in itertools.pairwise([*bounds, high])
    )


def _count_fires(schedule: Schedule, tz: ZoneInfo, low: datetime, high: datetime) -> int:
    fires = _fires_in(schedule, tz, low, high, _COUNT_BUDGET)
    if len(fires) < _COUNT_BUDGET:
        return len(fires)
    # Assume the rate of the first fires holds up to the stretch's last fire.
    last = _last_fires(schedule, tz, fires[-1], high, 1) or fires[-1:]
    mean_gap = (fires[-1] - fires[0]) / (len(fires) - 1)
    return len(fires) + round((last[0] - fires[-1]) / mean_gap)


def _fires_in(
    schedule: Schedule, tz: ZoneInfo, low: datetime, high: datetime, cap: int
) -> list[datetime]:
    """The first (at most `cap`) fires in (low, high]."""
    fires: list[datetime] = []
    current = next_fire(schedule, tz, low)
    while current is not None and current <= high and len(fires) < cap:
        fires.append(current)
        current = next_fire(schedule, tz, current)
    return fires


def _last_fires(
    schedule: Schedule, tz: ZoneInfo, low: datetime, high: datetime, k: int
) -> list[datetime]:
    """The last `k` fires in (low, high], ascending: a backward search with doubling windows."""
    found: list[datetime] = []
    resolution = _SECOND if schedule.has_seconds else 60 * _SECOND
    width = resolution * k
    while len(found) < k and high > low:
        start = max(low, high - width)
        chunk = _fires_in(schedule, tz, start, high, 4 * k + 1)
        if len(chunk) > 4 * k:
            # Too dense a window (a burst of fires): narrow it. One resolution
            # step never holds two fires, so this ends.
            width = max(resolution, (high - start) / 2)
            continue
        found[:0] = chunk[max(0, len(chunk) - (k - len(found))) :]
        high, width = start, width * 2
    return found
