"""Which due ticks a scheduler pass runs, under the job's misfire policy and grace."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from scheduler_svc.schedule.fires import _every, _utc, next_fire
from scheduler_svc.schedule.parse import Schedule

MisfirePolicy = Literal["run_once", "skip", "run_all"]

_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)
_EXACT_DUE = 256
_COUNT_STRATA = 16
_COUNT_BUDGET = 64


@dataclass(frozen=True, slots=True)
class DueTicks:
    """What a scheduler pass does with one job; see due_ticks."""

    ticks: list[datetime]
    next_run_at: datetime | None
    missed: int  # due ticks left out by the misfire policy (not run, not recorded)


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
    ``len(ticks) + missed`` is the number of due ticks. For a cron schedule with
    more than 256 due ticks ``missed`` is an estimate: each of 16 stretches is
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
