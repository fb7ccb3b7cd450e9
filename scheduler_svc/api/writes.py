"""Writing jobs: create, change, delete and trigger, each in one transaction with its
audit row (SPEC §8), named by id or by key. What a valid job is, and when it next runs,
is `jobs`'s; pausing, by one or in bulk, is `pausing`'s; a PUT by key is `by_key`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from scheduler_svc import audit, store
from scheduler_svc.api.jobs import (
    Rules,
    request_hash,
    schedule_state,
    spec_from_create,
    spec_from_patch,
)
from scheduler_svc.errors import IdempotencyConflict, KeyConflict, NotFound, VersionMismatch
from scheduler_svc.models import JobCreate, JobPatch, JobRow, JobSpec, RunRow
from scheduler_svc.store import Connection
from scheduler_svc.store.db import Pool


async def create(
    pool: Pool | Connection,
    tenant: str,
    body: JobCreate,
    rules: Rules,
    idempotency_key: str | None,
    ctx: audit.AuditContext,
) -> tuple[JobRow, bool]:
    """Create a job, audited; returns it and whether it is the replay of an earlier request."""
    spec = spec_from_create(body, rules)
    fingerprint = request_hash(body) if idempotency_key is not None else None
    # One statement writes the job and its audit row (store.job_insert): no transaction,
    # so two round trips (the clock, the insert) where BEGIN and COMMIT made five.
    if isinstance(pool, asyncpg.Pool):
        async with pool.acquire() as conn:
            row = await insert(conn, tenant, spec, ctx, idempotency_key, fingerprint)
    else:
        row = await insert(pool, tenant, spec, ctx, idempotency_key, fingerprint)
    if row is not None:
        return row, False
    # Nothing inserted: the tenant has a job with this Idempotency-Key or this key.
    if idempotency_key is not None:
        earlier = await store.job_get_by_idempotency_key(pool, tenant, idempotency_key)
        if earlier is not None:
            job, earlier_hash = earlier
            if earlier_hash != fingerprint:
                raise IdempotencyConflict()
            return job, True
    if spec.key is not None and await store.job_get_by_key(pool, tenant, spec.key) is not None:
        raise KeyConflict(f"another job already has the key {spec.key!r}")
    # The job in the way was deleted in between: a new one is right.
    return await create(pool, tenant, body, rules, idempotency_key, ctx)


async def insert(
    conn: Connection,
    tenant: str,
    spec: JobSpec,
    ctx: audit.AuditContext,
    idempotency_key: str | None = None,
    fingerprint: str | None = None,
) -> JobRow | None:
    """Insert a job planned from the database clock, with its audit row; None when the
    tenant has a job with this Idempotency-Key or this key."""
    status, next_run_at = schedule_state(spec, await store.db_now(conn))
    return await store.job_insert(
        conn,
        tenant,
        spec,
        status=status,
        next_run_at=next_run_at,
        actor=ctx.actor,
        changes=audit.created_changes(spec, status),
        request_id=ctx.request_id,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
    )


async def audit_changed(
    conn: Connection,
    tenant: str,
    action: audit.AuditAction,
    before: JobRow,
    after: JobRow,
    ctx: audit.AuditContext,
) -> None:
    """The audit row of a change to a job, if anything a client sees changed."""
    changes = audit.job_changes(before, after)
    if changes:
        await audit.record(conn, tenant, ctx, action, job_id=after.id, changes=changes)


def _reschedules(row: JobRow, spec: JobSpec) -> bool:
    return (
        spec.schedule != row.schedule
        or spec.timezone != row.timezone
        or spec.paused != (row.status == "paused")
    )


# A job named by its id or by its key.
JobRef = int | str
T = TypeVar("T")


def not_found(job: JobRef) -> NotFound:
    """The 404 of a job that does not exist (or is another tenant's)."""
    return NotFound(
        f"job {job} does not exist" if isinstance(job, int) else f"no job has the key {job!r}"
    )


async def lock(conn: Connection, tenant: str, job: JobRef) -> JobRow | None:
    """The job named by id or key, locked until the caller's transaction ends; or None."""
    if isinstance(job, int):
        return await store.job_lock(conn, tenant, job)
    return await store.job_lock_by_key(conn, tenant, job)


async def transaction(pool: Pool | Connection, work: Callable[[Connection], Awaitable[T]]) -> T:
    """`work` in a transaction, run once more if a migration changed the row type of a
    statement asyncpg had prepared: inside a transaction it cannot prepare it again, so it
    drops its caches and raises. This release's statements name the columns of jobs they
    return, so an expand of jobs does not do that (migrations/0006_job_keys.sql says why
    it matters); this is the net under that rule. On a connection (a caller's own
    transaction), a savepoint of it."""
    if not isinstance(pool, asyncpg.Pool):
        async with pool.transaction():
            return await work(pool)
    try:
        async with pool.acquire() as conn, conn.transaction():
            return await work(conn)
    except asyncpg.InvalidCachedStatementError:
        async with pool.acquire() as conn, conn.transaction():
            return await work(conn)


async def write(conn: Connection, tenant: str, row: JobRow, spec: JobSpec) -> JobRow:
    """Write `spec` over the locked `row`; a schedule, zone or pause change replans it."""
    status, next_run_at = row.status, row.next_run_at
    if _reschedules(row, spec):
        status, next_run_at = schedule_state(spec, await store.db_now(conn))
        if status == "paused":
            await store.runs_skip_pending(conn, row.id)
    updated = await store.job_update(
        conn, tenant, row.id, spec, status=status, next_run_at=next_run_at
    )
    assert updated is not None  # locked by the caller
    return updated


async def update(
    pool: Pool,
    tenant: str,
    job: JobRef,
    patch: JobPatch,
    rules: Rules,
    if_match: int | None,
    ctx: audit.AuditContext,
) -> JobRow:
    """Apply a PATCH in one transaction, audited; a schedule, zone or pause change
    replans the job."""

    async def work(conn: Connection) -> JobRow:
        row = await lock(conn, tenant, job)
        if row is None:
            raise not_found(job)
        if if_match is not None and if_match != row.version:
            raise VersionMismatch(f"job {job} is at version {row.version}, not {if_match}")
        updated = await write(conn, tenant, row, spec_from_patch(row, patch, rules))
        await audit_changed(conn, tenant, "job.update", row, updated, ctx)
        return updated

    return await transaction(pool, work)


async def delete(pool: Pool, tenant: str, job: JobRef, ctx: audit.AuditContext) -> None:
    """Delete a job and its runs, audited with what it was."""

    async def work(conn: Connection) -> None:
        row = await lock(conn, tenant, job)
        if row is None:
            raise not_found(job)
        await store.job_delete(conn, tenant, row.id)
        changes = audit.job_changes(row, None)
        await audit.record(conn, tenant, ctx, "job.delete", job_id=row.id, changes=changes)

    await transaction(pool, work)


async def trigger(pool: Pool, tenant: str, job_id: int, ctx: audit.AuditContext) -> RunRow:
    """A manual run of a job, due now, audited."""

    async def work(conn: Connection) -> RunRow:
        run = await store.run_trigger(conn, tenant, job_id)
        if run is None:
            raise not_found(job_id)
        await audit.record(conn, tenant, ctx, "job.trigger", job_id=job_id, run_id=run.id)
        return run

    return await transaction(pool, work)
