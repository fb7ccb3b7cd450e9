"""The days that history ids tell. A run id, an alert's id and an audit row's id are all
(UTC days since 2000-01-01) << 37 | a sequence number (schema.sql: run_id, history_id),
below 2^53, so a set of ids names the day partitions that hold its rows.

`days_of_ids` answers as schema.sql's run_ids_day_start and run_ids_day_end do (a test
holds the two to the same answers). A statement given its answer as parameters reads
only those partitions and compares each row with a value; given the functions, it calls
them once per row read, since PostgreSQL cannot inline a function that holds a query.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

DAY_SHIFT = 37
ID_END = 1 << 53
DAY_ZERO = datetime(2000, 1, 1, tzinfo=UTC)
# asyncpg sends these as -infinity and infinity.
BEFORE_ALL = datetime.min.replace(tzinfo=UTC)
AFTER_ALL = datetime.max.replace(tzinfo=UTC)


def day_of(at: datetime) -> int:
    """The day a history id of a row at `at` tells (UTC days since 2000-01-01)."""
    return (at - DAY_ZERO).days


def day_start(day: int) -> datetime | None:
    """When day `day` of history ids begins; None (unbounded) for day 1 and before: ids
    of day 1 are also those of every earlier time (history_id's greatest(…, 1))."""
    return DAY_ZERO + timedelta(days=day) if day > 1 else None


def days_of_ids(ids: Sequence[int]) -> tuple[datetime, datetime]:
    """[start, end) of the days of `ids`: from the first one's start to the last one's
    end. Unbounded below when an id is of day 1 or 0 (day 1 also holds every earlier
    tick, and day 0 the ids from before partitioning, of any time), and above when one
    is of day 0. No ids: an empty range."""
    if not ids:
        return AFTER_ALL, BEFORE_ALL
    first, last = min(ids) >> DAY_SHIFT, max(ids) >> DAY_SHIFT
    end = day_start(last + 1) if first > 0 else None
    return day_start(first) or BEFORE_ALL, end or AFTER_ALL
