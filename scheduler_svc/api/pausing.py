"""Pausing and resuming: one job, with an optional maintenance window (`until`), or every
job a filter matches (bulk, SPEC §8), in one transaction, audited one row per job.

A window's end is the scheduler's (engine/windows.py): the job resumes by itself then,
as a resume here would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from scheduler_svc import audit, store
from scheduler_svc.api import jobs, writes
from scheduler_svc.api.jobs import Rules
from scheduler_svc.api.writes import JobRef
from scheduler_svc.errors import InvalidRequest
from scheduler_svc.models import BulkRequest, BulkResult, JobPatch, JobRow
from scheduler_svc.store import Connection
from scheduler_svc.store.db import Pool


async def _check_until(conn: Connection, until: datetime | None) -> None:
    if until is None:
        return
    if until.tzinfo is None:
        raise InvalidRequest.field("until", "needs a time zone offset or Z")
    if until <= await store.db_now(conn):
        raise InvalidRequest.field("until", "is in the past: a window must end in the future")


async def _set_paused(
    conn: Connection,
    tenant: str,
    row: JobRow,
    paused: bool,
    until: datetime | None,
    rules: Rules,
) -> tuple[JobRow, dict[str, list[Any]]]:
    """Pause (until `until`, if given) or resume one locked job; the job and what changed
    (nothing, and the job as it was, when there is nothing to do). The caller audits."""
    is_paused = row.status == "paused"
    if paused == is_paused and (not paused or until is None or until == row.paused_until):
        return row, {}
    spec = jobs.spec_from_patch(row, JobPatch(paused=paused), rules)
    if paused:
        spec = msgspec.structs.replace(spec, paused_until=until)
    updated = await writes.write(conn, tenant, row, spec)
    return updated, audit.job_changes(row, updated)


def _action(paused: bool) -> audit.AuditAction:
    return "job.pause" if paused else "job.resume"


async def pause_one(
    pool: Pool,
    tenant: str,
    job: JobRef,
    paused: bool,
    until: datetime | None,
    rules: Rules,
    ctx: audit.AuditContext,
) -> JobRow:
    """POST /jobs/{id}/pause (with `until`: a window) and /resume."""

    async def work(conn: Connection) -> JobRow:
        await _check_until(conn, until)
        row = await writes.lock(conn, tenant, job)
        if row is None:
            raise writes.not_found(job)
        updated, changes = await _set_paused(conn, tenant, row, paused, until, rules)
        if changes:
            await audit.record(conn, tenant, ctx, _action(paused), job_id=row.id, changes=changes)
        return updated

    return await writes.transaction(pool, work)


async def bulk(
    pool: Pool,
    tenant: str,
    body: BulkRequest,
    paused: bool,
    rules: Rules,
    ctx: audit.AuditContext,
) -> BulkResult:
    """POST /jobs/bulk/pause (`paused`) and /jobs/bulk/resume: every job of `tenant` the
    filter matches, in one transaction; a dry run only counts them."""
    wanted = body.filter
    criteria = (wanted.ids, wanted.tag, wanted.name, wanted.status)
    if all(c is None for c in criteria) and not wanted.all:
        raise InvalidRequest.field(
            "filter", 'must name ids, tag, name or status, or be {"all": true} for every job'
        )
    if body.until is not None and not paused:
        raise InvalidRequest.field("until", "is for pausing: a resume has no window")

    async def work(conn: Connection) -> BulkResult:
        await _check_until(conn, body.until)
        if body.dry_run:  # counted, not locked: the scheduler's claim skips locked jobs
            return BulkResult(matched=await store.jobs_bulk_count(conn, tenant, wanted), changed=0)
        ids = await store.jobs_bulk_match(conn, tenant, wanted)
        changed = 0
        audited: dict[int, dict[str, list[Any]]] = {}
        for row in await store.jobs_get_many(conn, tenant, ids):
            updated, changes = await _set_paused(conn, tenant, row, paused, body.until, rules)
            changed += updated.status != row.status
            if changes:
                audited[row.id] = changes
        # One row per job that changed, in one statement.
        await audit.record_many(
            conn,
            tenant,
            ctx,
            _action(paused),
            job_ids=list(audited),
            changes=list(audited.values()),
        )
        return BulkResult(matched=len(ids), changed=changed)

    return await writes.transaction(pool, work)
