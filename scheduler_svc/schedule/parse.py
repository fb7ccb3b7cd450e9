"""Schedule text and time zone names, parsed and checked: `parse`, `parse_timezone`."""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

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

_CRON_REFERENCE = datetime(2000, 1, 1)


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


# --- parsing -----------------------------------------------------------------


# Cached: a pure function of its text, and checking a cron expression's fields with
# croniter costs more than the rest of a POST /jobs. The engine, the API and the console
# all ask about the same few schedules again and again. (Errors are not cached.)
@functools.lru_cache(maxsize=4096)
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
        compiled = compile_cron(cron, has_seconds)
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


# --- compiled cron ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledCron:
    """A cron expression compiled once: croniter's prototype, its resolution, and
    whether its hour field covers every hour."""

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


def compiled(schedule: Schedule) -> CompiledCron:
    """The compiled cron of a cron schedule (cached by expression)."""
    if schedule.cron is None:
        raise ValueError("a cron schedule needs its expression")
    return compile_cron(schedule.cron, schedule.has_seconds)


@functools.lru_cache(maxsize=1024)
def compile_cron(expr: str, has_seconds: bool) -> CompiledCron:
    """Compile a cron expression (raises CroniterError when croniter cannot read it)."""
    prototype = croniter(expr, _CRON_REFERENCE, ret_type=datetime, second_at_beginning=has_seconds)
    hours = croniter.expand(expr, second_at_beginning=has_seconds)[0][1]
    return CompiledCron(prototype, timedelta(seconds=1 if has_seconds else 60), hours == ["*"])
