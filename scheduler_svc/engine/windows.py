"""Maintenance windows: paused jobs that resume by themselves (SPEC §8, `until`).

A pause with `until` sets the job's paused_until. When it is past, some replica's
scheduler resumes the job as POST /jobs/{id}/resume would (next tick from now: the ticks
inside the window are not run) and audits it as the actor `system`. Every replica may
try; the jobs are locked SKIP LOCKED, so exactly one resumes each.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog

from scheduler_svc import audit, schedule, store
from scheduler_svc.models import JobRow, JobStatus
from scheduler_svc.store.db import Pool

log = structlog.get_logger("scheduler_svc.engine.windows")

# Jobs resumed per transaction; a bulk window over more ends in a few of them.
BATCH = 500


def resumed_state(row: JobRow, now: datetime) -> tuple[JobStatus, datetime | None]:
    """A job's status and next tick when it resumes at `now`."""
    try:
        parsed = schedule.parse(row.schedule)
        next_run_at = schedule.first_fire(parsed, schedule.parse_timezone(row.timezone), now)
    except schedule.ScheduleError:
        return "completed", None  # only a schedule stored before a stricter parser
    return ("active", next_run_at) if next_run_at is not None else ("completed", None)


async def resume_ended(pool: Pool, tenants: Sequence[str] | None = None) -> int:
    """Resume the paused jobs (of `tenants`; None: all) whose window is over; how many."""
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await store.jobs_window_ended(conn, tenants, BATCH)
            if not rows:
                return total
            now = await store.db_now(conn)
            states = [resumed_state(row, now) for row in rows]
            await store.jobs_window_resume(
                conn,
                [row.id for row in rows],
                [next_run_at for _, next_run_at in states],
                [status for status, _ in states],
            )
            for row, (status, _) in zip(rows, states, strict=True):
                changes: dict[str, list[Any]] = {
                    "status": [row.status, status],
                    "paused_until": [row.paused_until, None],
                }
                await audit.record(
                    conn, row.tenant, audit.SYSTEM, "job.resume", job_id=row.id, changes=changes
                )
        log.info("windows_ended", jobs=[row.id for row in rows])
        total += len(rows)
        if len(rows) < BATCH:
            return total
