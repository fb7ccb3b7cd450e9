"""Queries of the console's pages: the jobs list and its strip of recent outcomes, and
the overview's failures, runs under way, backlog, next fires and replicas; and the key
that signs the console's session cookies."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from scheduler_svc.models.console import (
    FailureGroup,
    JobLine,
    NextFire,
    RecentRuns,
    Replica,
    RunningRun,
)
from scheduler_svc.store.history_ids import day_of
from scheduler_svc.store.sql import QUERIES, Conn


async def console_jobs_page(
    conn: Conn,
    tenant: str,
    *,
    before_id: int | None,
    status: str | None,
    name: str | None,
    tags: Sequence[str],
    limit: int,
) -> list[JobLine]:
    """Up to `limit` of the tenant's jobs below `before_id`, newest first, filtered."""
    records = await conn.fetch(
        QUERIES["console_jobs_page"],
        tenant,
        before_id,
        status,
        name or None,
        list(tags) or None,
        limit,
    )
    return [msgspec.convert(dict(r), JobLine) for r in records]


async def console_recent_runs(
    conn: Conn, tenant: str, job_ids: Sequence[int], per_job: int
) -> dict[int, RecentRuns]:
    """The latest `per_job` runs of each job, by job id."""
    if not job_ids:
        return {}
    records = await conn.fetch(QUERIES["console_recent_runs"], tenant, list(job_ids), per_job)
    return {r["job_id"]: msgspec.convert(dict(r), RecentRuns) for r in records}


async def console_failures(
    conn: Conn, tenant: str, since: datetime, scan_limit: int
) -> list[FailureGroup]:
    """The tenant's failures since `since`, grouped by error, among at most `scan_limit`
    of the newest failed runs ticked since the day before `since`."""
    records = await conn.fetch(
        QUERIES["console_failures"], tenant, since, day_of(since) - 1, scan_limit
    )
    return [msgspec.convert(dict(r), FailureGroup) for r in records]


async def console_running(conn: Conn, tenant: str, limit: int) -> list[RunningRun]:
    """Up to `limit` of the tenant's runs under way, longest running first."""
    records = await conn.fetch(QUERIES["console_running"], tenant, limit)
    return [msgspec.convert(dict(r), RunningRun) for r in records]


async def console_backlog(conn: Conn, tenant: str | None, cap: int) -> int:
    """Due ticks not yet started (of `tenant`, or of all), each of two counts capped."""
    count: int = await conn.fetchval(QUERIES["console_backlog"], tenant, cap)
    return count


async def console_next_fires(conn: Conn, tenant: str, limit: int) -> list[NextFire]:
    """The tenant's next `limit` ticks."""
    records = await conn.fetch(QUERIES["console_next_fires"], tenant, limit)
    return [msgspec.convert(dict(r), NextFire) for r in records]


async def console_replicas(conn: Conn) -> list[Replica]:
    """The replicas connected to the database now."""
    records = await conn.fetch(QUERIES["console_replicas"])
    return [msgspec.convert(dict(r), Replica) for r in records]


async def console_key_get(conn: Conn, offered: bytes) -> bytes:
    """The console's session-signing key; `offered` becomes it if there is none yet."""
    secret: bytes = await conn.fetchval(QUERIES["console_key_get"], offered)
    return secret
