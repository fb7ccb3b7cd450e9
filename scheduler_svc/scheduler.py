"""The scheduler: turns due ticks of active jobs into runs, once each, on any number of replicas.

A pass (`tick_once`) claims due jobs with SKIP LOCKED, asks the schedule math which
ticks to run under the job's misfire and overlap policies, inserts those runs and
advances next_run_at, all in one transaction. The loop (`run`) sleeps until the
earliest due time or a wake-up (NOTIFY on job changes), whichever comes first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import structlog

from scheduler_svc import metrics, schedule, store
from scheduler_svc.aio import wait_any
from scheduler_svc.db import DATABASE_ERRORS, Pool
from scheduler_svc.models import DueJob
from scheduler_svc.store import Advance, Tick

log = structlog.get_logger("scheduler_svc.scheduler")

OVERLAP_SKIPPED = "an earlier run of this job was still pending or running (overlap: forbid)"


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one scheduler pass did."""

    jobs: int  # jobs claimed
    runs: int  # runs inserted (pending or skipped)
    full: bool  # the claim batch was full: more jobs may be due right now


@lru_cache(maxsize=4096)
def _parsed(text: str) -> schedule.Schedule:
    return schedule.parse(text)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return schedule.parse_timezone(name)


def plan_job(job: DueJob) -> tuple[Advance, list[Tick]]:
    """The runs a claimed job gets in this pass, and where its schedule goes next."""
    due = schedule.due_ticks(
        _parsed(job.schedule),
        _zone(job.timezone),
        job.next_run_at,
        job.now,
        job.misfire_policy,
        job.misfire_grace_s,
    )
    advance = Advance(job.id, due.next_run_at, "active" if due.next_run_at else "completed")
    ticks = []
    busy = job.busy
    for tick in due.ticks:
        if busy:
            ticks.append(Tick(job.id, job.tenant, tick, "skipped", OVERLAP_SKIPPED))
        else:
            ticks.append(Tick(job.id, job.tenant, tick, "pending"))
            # With overlap forbidden, a second tick of this pass overlaps the first.
            busy = job.overlap == "forbid"
    if due.skipped:
        log.info(
            "ticks_missed",
            job_id=job.id,
            missed=due.skipped,
            policy=job.misfire_policy,
            next_run_at=due.next_run_at,
        )
    return advance, ticks


async def tick_once(pool: Pool, *, batch: int = 500, now: datetime | None = None) -> PassResult:
    """One scheduler pass: materialize the due ticks of up to `batch` jobs.

    `now` overrides the database clock (tests); the default lets the database decide
    what is due.
    """
    async with pool.acquire() as conn, conn.transaction():
        jobs = await store.jobs_claim_due(conn, now, batch)
        if not jobs:
            return PassResult(0, 0, False)
        advances: list[Advance] = []
        ticks: list[Tick] = []
        for job in jobs:
            try:
                advance, job_ticks = plan_job(job)
            except schedule.ScheduleError as exc:
                # Only a schedule stored before a stricter parser could get here; stop
                # it rather than stall every pass on it.
                log.error("schedule_unreadable", job_id=job.id, error=str(exc))
                advance, job_ticks = Advance(job.id, None, "completed"), []
            advances.append(advance)
            ticks += job_ticks
        runs = await store.ticks_record(conn, advances, ticks)
    metrics.skipped(sum(t.status == "skipped" for t in ticks))
    return PassResult(len(jobs), runs, len(jobs) == batch)


class Scheduler:
    """The scheduler loop of one replica."""

    def __init__(
        self,
        pool: Pool,
        *,
        batch: int = 500,
        max_sleep_s: float = 5.0,
        on_runs: asyncio.Event | None = None,
    ) -> None:
        self._pool = pool
        self._batch = batch
        self._max_sleep_s = max_sleep_s
        self._on_runs = on_runs  # set when a pass inserted runs: this replica's executor
        self.wake = asyncio.Event()  # set by NOTIFY scheduler_jobs and at reconnects

    async def _sleep_s(self) -> float:
        due_in = await store.jobs_next_due(self._pool)
        if due_in is None:
            return self._max_sleep_s
        return min(max(due_in, 0.0), self._max_sleep_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop`; database outages are waited out, not fatal."""
        retry_s = 0.1
        while not stop.is_set():
            self.wake.clear()
            try:
                result = await tick_once(self._pool, batch=self._batch)
                if result.runs and self._on_runs is not None:
                    self._on_runs.set()
                if result.full:
                    continue
                timeout = await self._sleep_s()
                retry_s = 0.1
            except DATABASE_ERRORS as exc:
                log.warning("scheduler_database_error", error=str(exc), retry_in_s=retry_s)
                timeout, retry_s = retry_s, min(retry_s * 2, 5.0)
            await wait_any(timeout, stop, self.wake)
