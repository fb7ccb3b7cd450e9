"""Queries on jobs: create, read, list, update, delete; the scheduler's claim of due jobs
and the recording of their ticks as runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, TypeVar

import asyncpg
import msgspec

from scheduler_svc.errors import KeyConflict
from scheduler_svc.models import (
    DueJob,
    InsertedRun,
    JobRow,
    JobSpec,
    JobStatus,
)
from scheduler_svc.store.sql import QUERIES, Conn, Connection
from scheduler_svc.store.unfinished import UnfinishedFloor

T = TypeVar("T")

# The unique index of (tenant, key) in job_keys: a statement that fails on it gave a job
# a key another job of the tenant has.
KEY_INDEX = "job_keys_key"


def _job(record: asyncpg.Record | None) -> JobRow | None:
    return None if record is None else msgspec.convert(dict(record), JobRow)


def _spec_values(spec: JobSpec) -> tuple[Any, ...]:
    """A job's writable fields in the order job_insert and job_update take them."""
    return (
        spec.name,
        spec.attributes,
        spec.schedule,
        spec.timezone,
        spec.target,
        spec.max_attempts,
        spec.backoff_s,
        spec.backoff_max_s,
        spec.timeout_s,
        spec.misfire_policy,
        spec.misfire_grace_s,
        spec.overlap,
        spec.key,
        spec.managed_by,
    )


def _control_values(spec: JobSpec) -> tuple[Any, ...]:
    """The operator controls of a job (schema 7), after the other fields in both statements."""
    return (spec.tags, spec.jitter_s, spec.alerts, spec.paused_until)


async def job_insert(
    conn: Conn,
    tenant: str,
    spec: JobSpec,
    *,
    status: JobStatus,
    next_run_at: datetime | None,
    actor: str,
    changes: dict[str, list[Any]],
    request_id: str | None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> JobRow | None:
    """Insert a job with its `job.create` audit row (by `actor`, with `changes`, in
    `request_id`); None when this tenant already used `idempotency_key` or the job's key."""
    args = (
        *_spec_values(spec),
        status,
        next_run_at,
        idempotency_key,
        request_hash,
        *_control_values(spec),
        actor,
        changes,
        request_id,
    )
    try:
        keyed = spec.key is not None
        if keyed and not isinstance(conn, asyncpg.Pool) and conn.is_in_transaction():
            # A savepoint: a key taken meanwhile fails this statement, not the caller's
            # transaction (a PUT by key then replaces the job that has it).
            async with conn.transaction():
                return _job(await conn.fetchrow(QUERIES["job_insert"], tenant, *args))
        return _job(await conn.fetchrow(QUERIES["job_insert"], tenant, *args))
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != KEY_INDEX:
            raise
        return None


async def job_get(conn: Conn, tenant: str, job_id: int) -> JobRow | None:
    """One job of `tenant`, or None."""
    return _job(await conn.fetchrow(QUERIES["job_get"], tenant, job_id))


async def job_get_by_key(conn: Conn, tenant: str, key: str) -> JobRow | None:
    """The job of `tenant` with `key`, or None."""
    return _job(await conn.fetchrow(QUERIES["job_get_by_key"], tenant, key))


async def job_get_by_idempotency_key(
    conn: Conn, tenant: str, idempotency_key: str
) -> tuple[JobRow, str | None] | None:
    """The job `tenant` created with `idempotency_key` and its request hash, or None."""
    record = await conn.fetchrow(QUERIES["job_get_by_idempotency_key"], tenant, idempotency_key)
    if record is None:
        return None
    return msgspec.convert(dict(record), JobRow), record["request_hash"]


async def job_lock(conn: Conn, tenant: str, job_id: int) -> JobRow | None:
    """One job of `tenant`, locked FOR UPDATE until the caller's transaction ends, as the
    API shows it; None if there is none. Locked first, read after (queries.sql says why)."""
    if await conn.fetchval(QUERIES["job_lock"], tenant, job_id) is None:
        return None
    return await job_get(conn, tenant, job_id)


async def job_lock_by_key(conn: Conn, tenant: str, key: str) -> JobRow | None:
    """The job of `tenant` with `key`, locked FOR UPDATE (with its key) until the caller's
    transaction ends."""
    return _job(await conn.fetchrow(QUERIES["job_lock_by_key"], tenant, key))


async def jobs_list(
    conn: Conn,
    tenant: str,
    *,
    before_id: int | None,
    status: str | None,
    name: str | None,
    limit: int,
    key: str | None = None,
    managed_by: str | None = None,
    tags: Sequence[str] = (),
) -> list[JobRow]:
    """Up to `limit` jobs of `tenant` with ids below `before_id`, newest first; with `key`
    or `managed_by`, only those that have it (jobs_list_keyed); with `tags`, only those
    having all of them."""
    if key is not None or managed_by is not None:
        return await jobs_list_keyed(
            conn,
            tenant,
            before_id=before_id,
            status=status,
            name=name,
            limit=limit,
            key=key,
            managed_by=managed_by,
            tags=tags,
        )
    if tags:
        return await jobs_list_tagged(
            conn, tenant, before_id=before_id, status=status, name=name, limit=limit, tags=tags
        )
    records = await conn.fetch(QUERIES["jobs_list"], tenant, before_id, status, name, limit)
    return [msgspec.convert(dict(r), JobRow) for r in records]


async def jobs_list_tagged(
    conn: Conn,
    tenant: str,
    *,
    before_id: int | None,
    status: str | None,
    name: str | None,
    limit: int,
    tags: Sequence[str],
) -> list[JobRow]:
    """As jobs_list, of the jobs of `tenant` having every one of `tags` (by jobs_tags)."""
    records = await conn.fetch(
        QUERIES["jobs_list_tagged"], tenant, before_id, status, name, limit, list(tags)
    )
    return [msgspec.convert(dict(r), JobRow) for r in records]


async def jobs_list_keyed(
    conn: Conn,
    tenant: str,
    *,
    before_id: int | None,
    status: str | None,
    name: str | None,
    limit: int,
    key: str | None,
    managed_by: str | None,
    tags: Sequence[str] = (),
) -> list[JobRow]:
    """As jobs_list, of the jobs of `tenant` with `key` and `managed_by` (None: any; at
    least one is given)."""
    records = await conn.fetch(
        QUERIES["jobs_list_keyed"],
        tenant,
        before_id,
        status,
        name,
        key,
        managed_by,
        limit,
        list(tags) or None,
    )
    return [msgspec.convert(dict(r), JobRow) for r in records]


async def job_update(
    conn: Conn,
    tenant: str,
    job_id: int,
    spec: JobSpec,
    *,
    status: JobStatus,
    next_run_at: datetime | None,
) -> JobRow | None:
    """Overwrite a job's writable fields, status and next tick; None if it is gone.
    KeyConflict if another job of `tenant` has the key."""
    try:
        record = await conn.fetchrow(
            QUERIES["job_update"],
            tenant,
            job_id,
            *_spec_values(spec),
            status,
            next_run_at,
            *_control_values(spec),
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != KEY_INDEX:
            raise
        raise KeyConflict(f"another job already has the key {spec.key!r}") from None
    return _job(record)


async def job_delete(conn: Conn, tenant: str, job_id: int) -> bool:
    """Delete a job and its runs; False if there was none."""
    return await conn.fetchval(QUERIES["job_delete"], tenant, job_id) is not None


async def job_delete_by_key(conn: Conn, tenant: str, key: str) -> bool:
    """Delete the job of `tenant` with `key` and its runs; False if there was none."""
    return await conn.fetchval(QUERIES["job_delete_by_key"], tenant, key) is not None


async def jobs_claim_due(
    conn: Connection,
    now: datetime | None,
    limit: int,
    tenants: Sequence[str] | None = None,
    floor: UnfinishedFloor | None = None,
) -> list[DueJob]:
    """Lock up to `limit` due active jobs (of `tenants`; None: all) for the caller's
    transaction (SKIP LOCKED), looking for their unfinished runs from `floor` on (None:
    everywhere). A floor the database holds lower than `floor` (a run inserted below it
    since it was read) makes the claim again from there: the jobs already locked stay
    the caller's."""
    floor = floor or UnfinishedFloor()
    while True:
        since = floor.since
        record = await conn.fetchrow(QUERIES["jobs_claim_due"], now, limit, tenants, since)
        assert record is not None
        if not floor.read(record["floor"], since):
            return msgspec.json.decode(record["jobs"], type=list[DueJob])


# Advance and Tick are named tuples: a pass makes one or two per job, and a frozen
# dataclass's constructor costs several times a tuple's.
class Advance(NamedTuple):
    """A claimed job's new next tick (None: none left) and status."""

    job_id: int
    next_run_at: datetime | None
    status: JobStatus


class Tick(NamedTuple):
    """A run to materialize: pending; waiting for run `waits_for` (or behind the job's
    other waiting runs); skipped with the reason in `error`; succeeded, run by the
    scheduler itself in its pass; or running, leased for `lease_s`."""

    job_id: int
    tenant: str
    scheduled_for: datetime
    status: Literal["pending", "waiting", "skipped", "succeeded", "running"]
    error: str | None = None
    lease_s: float | None = None
    waits_for: int | None = None
    catch_up: bool = False  # run after its job's next tick had come due (overlap.py)
    due_at: datetime | None = None  # the tick plus its job's jitter; None: the tick


@dataclass(frozen=True, slots=True)
class Recorded:
    """What runs_materialize inserted."""

    runs: int  # runs inserted, whatever their status
    others: list[InsertedRun]  # those neither pending nor waiting: succeeded, skipped, running
    pending: int  # those pending, for any executor


async def runs_materialize(
    conn: Connection,
    advances: list[Advance],
    ticks: list[Tick],
    worker: str | None,
    *,
    operator_alerts: bool = False,
) -> Recorded:
    """Advance claimed jobs and insert their ticks' runs (a tick seen before is dropped).

    Succeeded and running ticks are recorded as `worker`'s. A tick skipped as an overlap
    writes its job.missed alert (`operator_alerts`: SCHEDULER_ALERT_URL is set)."""
    record = await conn.fetchrow(
        QUERIES["runs_materialize"],
        [a.job_id for a in advances],
        [a.next_run_at for a in advances],
        [a.status for a in advances],
        [t.job_id for t in ticks],
        [t.tenant for t in ticks],
        [t.scheduled_for for t in ticks],
        [t.status for t in ticks],
        _unless_all_empty([t.error for t in ticks]),
        worker,
        any(t.status == "pending" for t in ticks),
        _unless_all_empty([t.lease_s for t in ticks]),
        _unless_all_empty([t.waits_for for t in ticks]),
        _unless_all_empty([t.catch_up for t in ticks]),
        _unless_all_empty([t.due_at for t in ticks]),
        operator_alerts,
    )
    assert record is not None
    return Recorded(record[0], msgspec.json.decode(record[1], type=list[InsertedRun]), record[2])


def _unless_all_empty(values: list[T]) -> list[T]:
    """`values`, or no values where each is None or False: runs_materialize's unnest
    pads the column with NULLs then (queries.sql), and asyncpg encodes nothing."""
    return values if any(v is not None and v is not False for v in values) else []


class NextDue(NamedTuple):
    """Seconds until the earliest next tick of an active job and until the earliest end
    of a maintenance window (negative when past; None when there is none)."""

    tick_in_s: float | None
    window_end_in_s: float | None


async def jobs_next_due(conn: Conn, tenants: Sequence[str] | None = None) -> NextDue:
    """When the scheduler has work next: a tick, or a window that ends."""
    record = await conn.fetchrow(QUERIES["jobs_next_due"], tenants)
    assert record is not None
    return NextDue(record[0], record[1])


async def jobs_window_ended(
    conn: Connection, tenants: Sequence[str] | None, limit: int
) -> list[JobRow]:
    """Up to `limit` paused jobs whose window is over, locked (SKIP LOCKED) until the
    caller's transaction ends."""
    records = await conn.fetch(QUERIES["jobs_window_ended"], tenants, limit)
    return [msgspec.convert(dict(r), JobRow) for r in records]


async def jobs_window_resume(
    conn: Connection,
    job_ids: list[int],
    next_run_at: list[datetime | None],
    statuses: list[JobStatus],
) -> list[int]:
    """Resume jobs whose window is over (locked by jobs_window_ended) with these next
    ticks and statuses; the ids resumed."""
    records = await conn.fetch(QUERIES["jobs_window_resume"], job_ids, next_run_at, statuses)
    return [r["id"] for r in records]
