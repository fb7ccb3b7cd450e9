"""Fire times: the next one, a preview, the minimum-interval check, and the walk of a
cron expression through a time zone's offsets (see the package docstring)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from scheduler_svc.schedule.parse import CompiledCron, Schedule, ScheduleError, compiled

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_PROBE = timedelta(days=3)
# More than any change of a zone's offset, and than _PROBE.
_LEAP = 2 * _PROBE
# A valid cron fires at least every 8 years; stepping _PROBE at a time that is
# ~1000 steps, so this only stops runaway loops.
_MAX_STEPS = 20_000
_INTERVAL_REFERENCE = datetime(2024, 1, 1, tzinfo=UTC)
_INTERVAL_SAMPLES = 300
_INTERVAL_HORIZON = timedelta(days=400)
# How far ahead preview looks: see preview.
PREVIEW_HORIZON = timedelta(days=100 * 365 + 24)


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
    return _next_cron(compiled(schedule), tz, after)


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


def _next_cron(cron: CompiledCron, tz: ZoneInfo, after: datetime) -> datetime | None:
    try:
        return _walk(cron, tz, after)
    except OverflowError:
        return None


def _walk(cron: CompiledCron, tz: ZoneInfo, after: datetime) -> datetime | None:
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
