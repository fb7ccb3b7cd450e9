"""Queries on runs: the executors' exchange, waiting runs, release, trigger, cancel,
reads, prune, the runs a pause skips, and the due backlog."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import asyncpg
import msgspec

from scheduler_svc.models import (
    ClaimedRun,
    RunResult,
    RunRow,
    RunStatus,
)
from scheduler_svc.schedule.overlap import RunSpan, Settlement
from scheduler_svc.store.history_ids import days_of_ids
from scheduler_svc.store.sql import QUERIES, Conn, Connection
from scheduler_svc.store.unfinished import UnfinishedFloor


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
    tenants: Sequence[str] | None = None,
    operator_alerts: bool = False,
    floor: UnfinishedFloor | None = None,
) -> Exchange:
    """Record `results` of runs leased to `worker` and lease up to `claim` more runs of
    `tenants` (None: of all): pending ones due now and, if `leases`, running ones whose
    lease ran out, looking for them from `floor` on (None: everywhere). Failures and
    recoveries write their alerts (`operator_alerts`: SCHEDULER_ALERT_URL is set, so
    jobs without alert settings are alerted there)."""
    floor = floor or UnfinishedFloor()
    since = floor.since
    now = time.monotonic()
    ids = [r.run_id for r in results]
    record = await conn.fetchrow(
        QUERIES["runs_exchange"],
        worker,
        ids,
        [r.status for r in results],
        [r.delay_s for r in results],
        [r.error for r in results],
        [r.output for r in results],
        [r.duration_ms for r in results],
        claim,
        lease_margin_s,
        leases,
        [max(0.0, now - r.ended_at) for r in results],
        tenants,
        operator_alerts,
        *days_of_ids(ids),
        since,
    )
    assert record is not None
    recorded = set(record["finished"])
    # The statement's snapshot cannot see the retries it scheduled itself.
    due_in = [record["next_attempt_in_s"]] + [
        r.delay_s for r in results if r.status == "pending" and r.run_id in recorded
    ]
    if floor.read(record["floor"], since):
        due_in.append(0.0)  # it looked from above the floor: look again now, from it
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
    rows = await conn.fetch(QUERIES["runs_waiting_lock"], run_ids, job_ids, *days_of_ids(run_ids))
    return [r["id"] for r in rows]


async def runs_waiting_get(
    conn: Connection, job_ids: list[int], ended: list[int]
) -> tuple[list[RunSpan], datetime]:
    """The waiting and unfinished runs of `job_ids`, the `ended` runs, and what the
    waiting runs wait for; and the database clock."""
    record = await conn.fetchrow(QUERIES["runs_waiting_get"], job_ids, ended)
    assert record is not None
    return msgspec.json.decode(record[0], type=list[RunSpan]), record[1]


async def runs_waiting_settle(
    conn: Connection, settlements: list[Settlement], reason: str, *, operator_alerts: bool = False
) -> int:
    """Write what became of waiting runs (skipped with `reason`, each with its job.missed
    alert); how many were released."""
    ids = [s.id for s in settlements]
    released: int = await conn.fetchval(
        QUERIES["runs_waiting_settle"],
        ids,
        [s.action for s in settlements],
        [s.waits_for for s in settlements],
        reason,
        [s.catch_up for s in settlements],
        operator_alerts,
        *days_of_ids(ids),
    )
    return released


async def runs_release(conn: Conn, worker: str, run_ids: list[int]) -> None:
    """Hand unfinished runs back as pending, due now, their attempt not used up."""
    await conn.execute(QUERIES["runs_release"], worker, run_ids, *days_of_ids(run_ids))


def _run(record: asyncpg.Record | None) -> RunRow | None:
    return None if record is None else msgspec.convert(dict(record), RunRow)


async def run_trigger(conn: Conn, tenant: str, job_id: int) -> RunRow | None:
    """Insert a manual run of a job, due now; None if the job does not exist."""
    return _run(await conn.fetchrow(QUERIES["run_trigger"], tenant, job_id))


async def run_get(conn: Conn, tenant: str, run_id: int) -> RunRow | None:
    """One run of `tenant`, or None."""
    return _run(await conn.fetchrow(QUERIES["run_get"], tenant, run_id))


async def run_cancel(conn: Conn, tenant: str, run_id: int) -> tuple[RunRow, RunStatus] | None:
    """Cancel a pending or running run of `tenant`: the run, now cancelled, and the status
    it had. None if it had ended already or does not exist (run_get tells which)."""
    record = await conn.fetchrow(QUERIES["run_cancel"], tenant, run_id)
    if record is None:
        return None
    row = dict(record)
    previous: RunStatus = row.pop("previous")
    del row["notified"]
    return msgspec.convert(row, RunRow), previous


async def runs_cancelled(conn: Conn, run_ids: list[int]) -> set[int]:
    """Those of `run_ids` that are cancelled."""
    return set(await conn.fetchval(QUERIES["runs_cancelled"], run_ids, *days_of_ids(run_ids)))


# The windows runs_list reads a page from, newest first, in days before the cursor's day:
# (from, up to), None meaning the cursor itself, then everything older. A busy job fills
# a page from the first; one that runs daily reads six.
RUNS_LIST_WINDOWS = ((1, None), (2, 1), (4, 2), (8, 4), (16, 8), (32, 16), (64, 32), (None, 64))


async def runs_list(
    conn: Conn, tenant: str, job_id: int, *, before_id: int | None, limit: int
) -> list[RunRow]:
    """Up to `limit` runs of a job with ids below `before_id`, newest first."""
    records: list[asyncpg.Record] = []
    for since, until in RUNS_LIST_WINDOWS:
        records += await conn.fetch(
            QUERIES["runs_list"], tenant, job_id, before_id, limit - len(records), since, until
        )
        if len(records) >= limit:
            break
    return [msgspec.convert(dict(r), RunRow) for r in records]


async def runs_prune(conn: Conn, older_than_days: int, limit: int, lock_key: int) -> int:
    """Delete up to `limit` finished runs older than the retention, under the lock."""
    deleted: int = await conn.fetchval(QUERIES["runs_prune"], older_than_days, limit, lock_key)
    return deleted


async def runs_skip_pending(conn: Conn, job_id: int) -> None:
    """Mark a paused job's scheduled runs that have not started as skipped."""
    await conn.execute(QUERIES["runs_skip_pending"], job_id)


class Backlog(NamedTuple):
    """Due ticks not yet started, and seconds since the earliest of them was due (0: none;
    runs waiting for an earlier run of their job count in `ticks` only)."""

    ticks: int
    behind_s: float


async def runs_due_backlog(conn: Conn) -> Backlog:
    """Due ticks not yet started (pending runs due now plus active jobs due now), and
    how far behind the earliest of them is."""
    row = await conn.fetchrow(QUERIES["runs_due_backlog"])
    assert row is not None
    return Backlog(row["ticks"], row["behind_s"])


async def history_partitions_create(conn: Conn, days_ahead: int, lock_key: int) -> int | None:
    """Create the missing day partitions up to `days_ahead` days ahead, under the lock;
    how many were made (None: another replica holds the lock)."""
    made: int | None = await conn.fetchval(
        QUERIES["history_partitions_create"], days_ahead, lock_key
    )
    return made


async def history_partitions_detach(conn: Conn, older_than_days: int, lock_key: int) -> list[str]:
    """Detach the day partitions that ended more than `older_than_days` days ago, under
    the lock; the names of those detached (and of any left detached), to drop."""
    detached: list[str] | None = await conn.fetchval(
        QUERIES["history_partitions_detach"], older_than_days, lock_key
    )
    return detached or []


async def history_partition_drop(conn: Conn, partition: str) -> None:
    """Drop a partition history_partitions_detach detached."""
    await conn.execute(QUERIES["history_partition_drop"], partition)
