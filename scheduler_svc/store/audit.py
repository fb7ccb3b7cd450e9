"""Queries on the audit trail (write a row, many rows; list a tenant's, a job's) and the
run search, a history read of the same shape: both read newest first, window of days
after window (`windows`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

import asyncpg
import msgspec

from scheduler_svc.models import AuditOut, RunRow, RunStatus
from scheduler_svc.store.history_ids import DAY_SHIFT, ID_END, day_of, day_start
from scheduler_svc.store.runs import RUNS_LIST_WINDOWS
from scheduler_svc.store.sql import QUERIES, Conn

RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


@dataclass(frozen=True, slots=True)
class Window:
    """Rows with ids in [id_from, id_below) and times in [since, until) (None: unbounded)."""

    id_from: int
    id_below: int
    since: datetime | None
    until: datetime | None


def windows(
    before_id: int | None, since: datetime | None = None, until: datetime | None = None
) -> Iterator[Window]:
    """The windows of days a newest-first page below `before_id`, of rows timed in
    [since, until), is read from, newest first: the days of RUNS_LIST_WINDOWS counted back
    from the day of `before_id` (or of `until`, if earlier; else today), then one window
    of everything older, which alone holds ids of day 0 (runs from before partitioning,
    of any time). An id tells the day of its row's time, so a window reads only its days'
    partitions; together they hold every id below `before_id` once, so this process's
    clock (today) decides how many windows are read, never which rows are found.
    """
    top = before_id if before_id is not None else ID_END
    origin = before_id
    if until is not None and day_of(until) >= 1:
        # Ids of days up to `until`'s: the windows count back from there.
        bound = min((day_of(until) + 1) << DAY_SHIFT, ID_END)
        origin, top = bound if origin is None else min(origin, bound), min(top, bound)
    if origin is not None and origin >> DAY_SHIFT == 0:  # an id from before partitioning
        yield Window(0, top, since, until)
        return
    first = origin >> DAY_SHIFT if origin is not None else day_of(datetime.now(UTC))
    for days_from, days_to in RUNS_LIST_WINDOWS:
        if days_from is None:
            assert days_to is not None
            yield Window(0, max(first - days_to, 1) << DAY_SHIFT, since, until)
            return
        low = max(first - days_from, 1)
        if days_to is None:  # up to the cursor; without one, the days ahead too
            id_below, below = top, day_start(first + 1) if origin is not None else None
        else:
            id_below, below = max(first - days_to, 1) << DAY_SHIFT, day_start(first - days_to)
        since_low = _later(day_start(low), since)
        yield Window(low << DAY_SHIFT, id_below, since_low, _earlier(below, until))
        if since is not None and low <= day_of(since):
            # Every older day is before `since`: only ids of day 0 may still be in it.
            yield Window(0, low << DAY_SHIFT, since, until)
            return


async def audit_insert(
    conn: Conn,
    tenant: str,
    actor: str,
    action: str,
    job_id: int | None,
    run_id: int | None,
    changes: dict[str, list[Any]],
    request_id: str | None,
) -> None:
    """Write one audit row."""
    await conn.execute(
        QUERIES["audit_insert"], tenant, actor, action, job_id, run_id, changes, request_id
    )


async def audit_insert_many(
    conn: Conn,
    tenant: str,
    actor: str,
    action: str,
    job_ids: list[int],
    changes: list[dict[str, list[Any]]],
    request_id: str | None,
) -> None:
    """Write one audit row per job of `job_ids`, with the changes of the same position."""
    await conn.execute(
        QUERIES["audit_insert_many"], tenant, actor, action, job_ids, changes, request_id
    )


def _audit(records: Sequence[asyncpg.Record]) -> list[AuditOut]:
    return [msgspec.convert(dict(r), AuditOut) for r in records]


async def audit_list(
    conn: Conn, tenant: str, *, before_id: int | None, limit: int
) -> list[AuditOut]:
    """Up to `limit` audit rows of `tenant` with ids below `before_id`, newest first."""
    records: list[asyncpg.Record] = []
    for w in windows(before_id):
        records += await conn.fetch(
            QUERIES["audit_list"],
            tenant,
            w.id_from,
            w.id_below,
            w.since,
            w.until,
            limit - len(records),
        )
        if len(records) >= limit:
            break
    return _audit(records)


async def audit_list_job(
    conn: Conn, tenant: str, job_id: int, *, before_id: int | None, limit: int
) -> list[AuditOut]:
    """Up to `limit` audit rows of one job (deleted or not) below `before_id`, newest first."""
    return _audit(await conn.fetch(QUERIES["audit_list_job"], tenant, job_id, before_id, limit))


async def runs_search(
    conn: Conn,
    tenant: str,
    *,
    status: str | None = None,
    job_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int,
) -> list[RunRow]:
    """Up to `limit` runs of `tenant` (of `job_id`, with `status`, if given) whose tick is
    in [since, until), with ids below `before_id`, newest first (of one job: runs_search_job)."""
    if job_id is not None:
        return await runs_search_job(
            conn,
            tenant,
            job_id,
            status=status,
            since=since,
            until=until,
            before_id=before_id,
            limit=limit,
        )
    return await _search(conn, "runs_search", (), tenant, status, since, until, before_id, limit)


async def runs_search_job(
    conn: Conn,
    tenant: str,
    job_id: int,
    *,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int,
) -> list[RunRow]:
    """As runs_search, of one job's runs (read by job_runs_job_id)."""
    return await _search(
        conn, "runs_search_job", (job_id,), tenant, status, since, until, before_id, limit
    )


async def _search(
    conn: Conn,
    query: str,
    extra: tuple[int, ...],
    tenant: str,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[RunRow]:
    """Window after window of days, newest first, until the page is full."""
    statuses = [status] if status is not None else list(RUN_STATUSES)
    records: list[asyncpg.Record] = []
    for w in windows(before_id, since, until):
        records += await conn.fetch(
            QUERIES[query],
            tenant,
            w.id_from,
            w.id_below,
            statuses,
            w.since,
            w.until,
            limit - len(records),
            *extra,
        )
        if len(records) >= limit:
            break
    return [msgspec.convert(dict(r), RunRow) for r in records]
