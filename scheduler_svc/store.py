"""The database, one function per named query in queries.sql; driver errors become domain errors."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from typing import Any, Literal, NamedTuple, TypeAlias

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from scheduler_svc.models import (
    ApiKeyRow,
    ClaimedRun,
    DueJob,
    InsertedRun,
    JobRow,
    JobSpec,
    JobStatus,
    RunResult,
    RunRow,
)
from scheduler_svc.overlap import RunSpan, Settlement

# A connection, plain or pooled: what a transaction runs on.
Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
# Anything that runs a statement: a connection or the pool itself.
Conn: TypeAlias = "Connection | asyncpg.Pool[Any]"


def load_queries(text: str) -> dict[str, str]:
    """Split queries.sql into {name: statement} at its `-- name --` lines."""
    blocks = re.split(r"^-- ([a-z_]+) --\n", text, flags=re.MULTILINE)
    return {name: sql.strip() for name, sql in zip(blocks[1::2], blocks[2::2], strict=True)}


QUERIES = load_queries(files("scheduler_svc").joinpath("queries.sql").read_text())


def _job(record: asyncpg.Record | None) -> JobRow | None:
    return None if record is None else msgspec.convert(dict(record), JobRow)


async def schema_lock(conn: Conn, key: int) -> None:
    """Take the schema advisory lock until the end of the caller's transaction."""
    await conn.execute(QUERIES["schema_lock"], key)


async def schema_version_get(conn: Conn) -> int:
    """The schema version recorded in the database."""
    version: int = await conn.fetchval(QUERIES["schema_version_get"])
    return version


async def db_now(conn: Conn) -> datetime:
    """The database clock."""
    now: datetime = await conn.fetchval(QUERIES["db_now"])
    return now


async def job_insert(
    conn: Conn,
    tenant: str,
    spec: JobSpec,
    *,
    status: JobStatus,
    next_run_at: datetime | None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> JobRow | None:
    """Insert a job; None when this tenant already used `idempotency_key`."""
    return _job(
        await conn.fetchrow(
            QUERIES["job_insert"],
            tenant,
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
            status,
            next_run_at,
            idempotency_key,
            request_hash,
        )
    )


async def job_get(conn: Conn, tenant: str, job_id: int) -> JobRow | None:
    """One job of `tenant`, or None."""
    return _job(await conn.fetchrow(QUERIES["job_get"], tenant, job_id))


async def job_get_by_idempotency_key(
    conn: Conn, tenant: str, idempotency_key: str
) -> tuple[JobRow, str | None] | None:
    """The job `tenant` created with `idempotency_key` and its request hash, or None."""
    record = await conn.fetchrow(QUERIES["job_get_by_idempotency_key"], tenant, idempotency_key)
    if record is None:
        return None
    return msgspec.convert(dict(record), JobRow), record["request_hash"]


async def job_lock(conn: Conn, tenant: str, job_id: int) -> JobRow | None:
    """One job of `tenant`, locked FOR UPDATE until the caller's transaction ends."""
    return _job(await conn.fetchrow(QUERIES["job_lock"], tenant, job_id))


async def jobs_list(
    conn: Conn,
    tenant: str,
    *,
    before_id: int | None,
    status: str | None,
    name: str | None,
    limit: int,
) -> list[JobRow]:
    """Up to `limit` jobs of `tenant` with ids below `before_id`, newest first."""
    records = await conn.fetch(QUERIES["jobs_list"], tenant, before_id, status, name, limit)
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
    """Overwrite a job's writable fields, status and next tick; None if it is gone."""
    return _job(
        await conn.fetchrow(
            QUERIES["job_update"],
            tenant,
            job_id,
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
            status,
            next_run_at,
        )
    )


async def job_delete(conn: Conn, tenant: str, job_id: int) -> bool:
    """Delete a job and its runs; False if there was none."""
    return await conn.fetchval(QUERIES["job_delete"], tenant, job_id) is not None


async def jobs_skip_pending(conn: Conn, job_id: int) -> None:
    """Mark a paused job's scheduled runs that have not started as skipped."""
    await conn.execute(QUERIES["jobs_skip_pending"], job_id)


async def jobs_claim_due(conn: Connection, now: datetime | None, limit: int) -> list[DueJob]:
    """Lock up to `limit` due active jobs for the caller's transaction (SKIP LOCKED)."""
    text: str = await conn.fetchval(QUERIES["jobs_claim_due"], now, limit)
    return msgspec.json.decode(text, type=list[DueJob])


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


@dataclass(frozen=True, slots=True)
class Recorded:
    """What ticks_record inserted."""

    runs: int  # runs inserted, whatever their status
    others: list[InsertedRun]  # those neither pending nor waiting: succeeded, skipped, running
    pending: int  # those pending, for any executor


async def ticks_record(
    conn: Connection, advances: list[Advance], ticks: list[Tick], worker: str | None
) -> Recorded:
    """Advance claimed jobs and insert their ticks' runs (a tick seen before is dropped).

    Succeeded and running ticks are recorded as `worker`'s."""
    record = await conn.fetchrow(
        QUERIES["ticks_record"],
        [a.job_id for a in advances],
        [a.next_run_at for a in advances],
        [a.status for a in advances],
        [t.job_id for t in ticks],
        [t.tenant for t in ticks],
        [t.scheduled_for for t in ticks],
        [t.status for t in ticks],
        [t.error for t in ticks],
        worker,
        any(t.status == "pending" for t in ticks),
        [t.lease_s for t in ticks],
        [t.waits_for for t in ticks],
        [t.catch_up for t in ticks],
    )
    assert record is not None
    return Recorded(record[0], msgspec.json.decode(record[1], type=list[InsertedRun]), record[2])


async def jobs_next_due(conn: Conn) -> float | None:
    """Seconds until the earliest next tick of an active job (negative if overdue)."""
    seconds: float | None = await conn.fetchval(QUERIES["jobs_next_due"])
    return seconds


async def runs_due_backlog(conn: Conn) -> int:
    """Due ticks not yet started: pending runs due now plus active jobs due now."""
    backlog: int = await conn.fetchval(QUERIES["runs_due_backlog"])
    return backlog


@dataclass(frozen=True, slots=True)
class Exchange:
    """What an executor's round trip came to."""

    recorded: set[int]  # ids whose results were written; the others lost their lease
    leased: list[ClaimedRun]  # runs now leased to this worker
    next_attempt_in_s: float | None  # until a pending run's attempt is due
    # Until a running run's lease runs out; None if there is none, or if not looked at.
    next_lease_end_in_s: float | None = None
    # Runs recorded final whose job has waiting runs, and (when leases were looked at)
    # jobs whose waiting runs have nothing left to wait for: runs_waiting_settle's work.
    ended_with_waiters: list[int] = field(default_factory=list)
    stranded_jobs: list[int] = field(default_factory=list)


async def runs_exchange(
    conn: Conn,
    worker: str,
    results: list[RunResult],
    claim: int,
    lease_margin_s: float,
    *,
    leases: bool = True,
) -> Exchange:
    """Record `results` of runs leased to `worker` and lease up to `claim` more runs:
    pending ones due now and, if `leases`, running ones whose lease ran out."""
    now = time.monotonic()
    record = await conn.fetchrow(
        QUERIES["runs_exchange"],
        worker,
        [r.run_id for r in results],
        [r.status for r in results],
        [r.delay_s for r in results],
        [r.error for r in results],
        [r.output for r in results],
        [r.duration_ms for r in results],
        claim,
        lease_margin_s,
        leases,
        [max(0.0, now - r.ended_at) for r in results],
    )
    assert record is not None
    recorded = set(record["finished"])
    # The statement's snapshot cannot see the retries it scheduled itself.
    due_in = [record["next_attempt_in_s"]] + [
        r.delay_s for r in results if r.status == "pending" and r.run_id in recorded
    ]
    known = [seconds for seconds in due_in if seconds is not None]
    return Exchange(
        recorded=recorded,
        leased=msgspec.json.decode(record["claimed"], type=list[ClaimedRun]),
        next_attempt_in_s=min(known) if known else None,
        next_lease_end_in_s=record["next_lease_end_in_s"],
        ended_with_waiters=record["ended_with_waiters"],
        stranded_jobs=record["stranded_jobs"] or [],
    )


async def runs_waiting_lock(conn: Connection, run_ids: list[int], job_ids: list[int]) -> list[int]:
    """Lock the jobs of `run_ids` and `job_ids` until the caller's transaction ends."""
    return [r["id"] for r in await conn.fetch(QUERIES["runs_waiting_lock"], run_ids, job_ids)]


async def runs_waiting_get(
    conn: Connection, job_ids: list[int], ended: list[int]
) -> tuple[list[RunSpan], datetime]:
    """The waiting and unfinished runs of `job_ids`, the `ended` runs, and what the
    waiting runs wait for; and the database clock."""
    record = await conn.fetchrow(QUERIES["runs_waiting_get"], job_ids, ended)
    assert record is not None
    return msgspec.json.decode(record[0], type=list[RunSpan]), record[1]


async def runs_waiting_settle(conn: Connection, settlements: list[Settlement], reason: str) -> int:
    """Write what became of waiting runs (skipped with `reason`); how many were released."""
    released: int = await conn.fetchval(
        QUERIES["runs_waiting_settle"],
        [s.id for s in settlements],
        [s.action for s in settlements],
        [s.waits_for for s in settlements],
        reason,
        [s.catch_up for s in settlements],
    )
    return released


async def runs_release(conn: Conn, worker: str, run_ids: list[int]) -> None:
    """Hand unfinished runs back as pending, due now, their attempt not used up."""
    await conn.execute(QUERIES["runs_release"], worker, run_ids)


def _run(record: asyncpg.Record | None) -> RunRow | None:
    return None if record is None else msgspec.convert(dict(record), RunRow)


async def run_trigger(conn: Conn, tenant: str, job_id: int) -> RunRow | None:
    """Insert a manual run of a job, due now; None if the job does not exist."""
    return _run(await conn.fetchrow(QUERIES["run_trigger"], tenant, job_id))


async def run_get(conn: Conn, tenant: str, run_id: int) -> RunRow | None:
    """One run of `tenant`, or None."""
    return _run(await conn.fetchrow(QUERIES["run_get"], tenant, run_id))


async def runs_list(
    conn: Conn, tenant: str, job_id: int, *, before_id: int | None, limit: int
) -> list[RunRow]:
    """Up to `limit` runs of a job with ids below `before_id`, newest first."""
    records = await conn.fetch(QUERIES["runs_list"], tenant, job_id, before_id, limit)
    return [msgspec.convert(dict(r), RunRow) for r in records]


async def runs_prune(conn: Conn, older_than_days: int, limit: int, lock_key: int) -> int:
    """Delete up to `limit` finished runs older than the retention, under the lock."""
    deleted: int = await conn.fetchval(QUERIES["runs_prune"], older_than_days, limit, lock_key)
    return deleted


async def ping(conn: Conn) -> None:
    """Fail unless the connection answers."""
    await conn.fetchval(QUERIES["ping"])


# API keys (auth.py, keys.py).


def _api_key(record: asyncpg.Record | None) -> ApiKeyRow | None:
    if record is None:
        return None
    return ApiKeyRow(
        prefix=record["prefix"],
        key_hash=bytes(record["key_hash"]),
        tenant=record["tenant"],
        scopes=list(record["scopes"]),
        created_at=record["created_at"],
        last_used_at=record["last_used_at"],
        revoked_at=record["revoked_at"],
    )


async def api_key_insert(
    conn: Conn, prefix: str, key_hash: bytes, tenant: str, scopes: list[str]
) -> ApiKeyRow | None:
    """Store a key's hash; None when its prefix or hash is already taken."""
    return _api_key(
        await conn.fetchrow(QUERIES["api_key_insert"], prefix, key_hash, tenant, scopes)
    )


async def api_key_get(
    conn: Conn, prefix: str, touch_after_s: float
) -> tuple[ApiKeyRow, bool] | None:
    """The key with `prefix` and whether its last use is older than `touch_after_s`, or None."""
    record = await conn.fetchrow(QUERIES["api_key_get"], prefix, touch_after_s)
    row = _api_key(record)
    if row is None:
        return None
    assert record is not None
    return row, bool(record["touch_due"])


async def api_key_touch(conn: Conn, prefix: str, touch_after_s: float) -> None:
    """Set last_used_at to now unless it is younger than `touch_after_s`."""
    await conn.execute(QUERIES["api_key_touch"], prefix, touch_after_s)


async def api_keys_list(conn: Conn) -> list[ApiKeyRow]:
    """Every key, oldest first."""
    return [row for r in await conn.fetch(QUERIES["api_keys_list"]) if (row := _api_key(r))]


async def api_key_revoke(conn: Conn, prefix: str) -> ApiKeyRow | None:
    """Revoke the key with `prefix`; None if there is none."""
    return _api_key(await conn.fetchrow(QUERIES["api_key_revoke"], prefix))


async def api_keys_exist(conn: Conn) -> bool:
    """Whether any API key, revoked or not, exists."""
    exists: bool = await conn.fetchval(QUERIES["api_keys_exist"])
    return exists
