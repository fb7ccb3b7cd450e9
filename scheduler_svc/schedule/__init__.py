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

The package: `parse` (schedule text and zone names), `fires` (fire times, the cron
walk in a zone), `misfire` (which ticks a pass runs), `overlap` (which of those run,
wait or are skipped when runs of a job must not overlap). Pure: it imports nothing
from the rest of scheduler_svc, reads no clock and does no I/O.
"""

from scheduler_svc.schedule.fires import (
    PREVIEW_HORIZON,
    check_min_interval,
    first_fire,
    next_fire,
    preview,
)
from scheduler_svc.schedule.misfire import DueTicks, MisfirePolicy, due_ticks
from scheduler_svc.schedule.parse import (
    Schedule,
    ScheduleError,
    parse,
    parse_timezone,
)

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
