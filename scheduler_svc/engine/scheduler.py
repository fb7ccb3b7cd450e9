"""The scheduler: turns due ticks of active jobs into runs, once each, on any number of replicas.

A pass (`tick_once`) claims due jobs with SKIP LOCKED, asks the schedule math which
ticks to run under the job's misfire and overlap policies, inserts those runs and
advances next_run_at, all in one transaction. A tick whose target does no I/O (a
log line) is run by the pass itself before it commits, and inserted succeeded; the
others are inserted pending for the executors. The loop (`run`) sleeps until the
earliest due time or a wake-up (NOTIFY on job changes), whichever comes first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

import structlog

from scheduler_svc import logs, metrics, schedule, store
from scheduler_svc.engine import windows
from scheduler_svc.engine.aio import wait_any
from scheduler_svc.engine.rollup import RunStats
from scheduler_svc.models import ClaimedRun, DueJob, InsertedRun, MisfirePolicy
from scheduler_svc.schedule import jitter
from scheduler_svc.schedule.overlap import NOTHING_UNFINISHED, OVERLAP_SKIPPED, plan_ticks
from scheduler_svc.store import Advance, Tick
from scheduler_svc.store.db import DATABASE_ERRORS, Pool
from scheduler_svc.targets import RUN_IN_PASS, log_line

log = structlog.get_logger("scheduler_svc.engine.scheduler")
# After a pass that left nothing due, the next starts no sooner than this. Ticks
# spread over each second (thousands of jobs created at different times) then come
# a few per pass rather than one pass each, and a replica that lost the race for a
# tick waits for the winner to commit instead of asking again and again meanwhile.
PASS_GAP_S = 0.005
# After a pass that claimed this many jobs or more, ticks come faster than some 2,000
# a second: the next pass starts no sooner than 20 ms later. A pass is a transaction
# of four round trips and a synchronous commit whatever it carries, so a quarter as
# many passes cost a replica and PostgreSQL less per tick, for at most 20 ms more
# lag (bench/README.md has the measurement).
# A fixed gap, not one grown from how long the last pass took: passes share the
# event loop with the webhook calls, so a longer gap made larger bursts of calls,
# which made passes slower and the gap longer still.
BUSY_PASS_JOBS = 20
BUSY_PASS_GAP_S = 0.02


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one scheduler pass did."""

    jobs: int  # jobs claimed
    runs: int  # runs inserted (pending, waiting, skipped, or succeeded: run by the pass)
    full: bool  # the claim batch was full: more jobs may be due right now
    for_executors: bool = False  # some inserted runs wait for an executor


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return schedule.parse_timezone(name)


# Jobs on the same schedule, due at the same tick, have the same next tick: one pass
# of a thousand hourly jobs asks croniter once, not a thousand times. (`now` is the
# pass's, so entries of earlier passes simply age out.)
@lru_cache(maxsize=1024)
def _due(
    text: str,
    zone: str,
    next_run_at: datetime,
    now: datetime,
    policy: MisfirePolicy,
    grace_s: int,
) -> schedule.DueTicks:
    return schedule.due_ticks(schedule.parse(text), _zone(zone), next_run_at, now, policy, grace_s)


def job_ticks(job: DueJob, *, run_in_pass: bool = False) -> tuple[Advance, list[Tick]]:
    """The runs a claimed job gets in this pass, and where its schedule goes next.

    Overlap decides each tick by its due time (overlap.plan_ticks): run (pending, or
    with `run_in_pass` run by the pass itself: succeeded, so such ticks never overlap
    one another), wait for an earlier run of the job, or skip. A tick with jitter is due
    after the pass (jitter.py): it is inserted pending, due then, and never run by the
    pass; and it waits, rather than being skipped, for an earlier run that may end by
    then."""
    due = _due(
        job.schedule,
        job.timezone,
        job.next_run_at,
        job.now,
        job.misfire_policy,
        job.misfire_grace_s,
    )
    advance = Advance(job.id, due.next_run_at, "active" if due.next_run_at else "completed")
    unfinished = job.unfinished or NOTHING_UNFINISHED
    dues = [jitter.due_at(job.id, tick, job.jitter_s) for tick in due.ticks]
    jittered = job.jitter_s > 0
    plans = plan_ticks(
        dues,
        unfinished,
        forbid=job.overlap == "forbid" and not (run_in_pass and not jittered),
        certain=not jittered,
    )
    ticks = []
    # The tick after each due tick: a tick runs as catch-up when that one is due too.
    following = [*due.ticks[1:], due.next_run_at]
    for tick, due_at, plan, after in zip(due.ticks, dues, plans, following, strict=True):
        at = due_at if jittered else None
        if plan == "skip":
            ticks.append(Tick(job.id, job.tenant, tick, "skipped", OVERLAP_SKIPPED, due_at=at))
        elif plan == "wait":
            blocker = unfinished.blocker
            ticks.append(Tick(job.id, job.tenant, tick, "waiting", waits_for=blocker, due_at=at))
        else:
            in_pass = run_in_pass and due_at <= job.now
            status: Literal["succeeded", "pending"] = "succeeded" if in_pass else "pending"
            late = after is not None and after <= job.now
            ticks.append(Tick(job.id, job.tenant, tick, status, catch_up=late, due_at=at))
    if due.missed:
        log.info(
            "ticks_missed",
            job_id=job.id,
            missed=due.missed,
            policy=job.misfire_policy,
            next_run_at=due.next_run_at,
        )
    return advance, ticks


class LocalExecutor(Protocol):
    """This replica's executor, as a scheduler pass sees it: the pass runs log ticks
    itself as its worker, and leases it other ticks while it has free slots."""

    @property
    def worker_id(self) -> str: ...

    @property
    def lease_margin_s(self) -> float: ...

    @property
    def wake(self) -> asyncio.Event:
        """Set when runs are waiting for an executor."""
        ...

    def reserve(self, wanted: int) -> int:
        """Hold up to `wanted` free slots for runs about to be leased; how many."""
        ...

    def adopt(self, runs: list[ClaimedRun], reserved: int) -> None:
        """Start runs leased to this worker, giving back the `reserved` slots."""
        ...


async def tick_once(
    pool: Pool,
    *,
    batch: int = 500,
    now: datetime | None = None,
    executor: LocalExecutor | None = None,
    tenants: Sequence[str] | None = None,
    operator_alerts: bool = False,
    stats: RunStats | None = None,
    floor: store.UnfinishedFloor | None = None,
) -> PassResult:
    """One scheduler pass: materialize the due ticks of up to `batch` jobs.

    With this replica's `executor`, a tick goes straight to work rather than through
    a pending run that some executor claims later:
    - a log-target tick is run by the pass itself: inserted succeeded, its line
      written before the transaction commits (one write per tick instead of three;
      a pass that fails to commit after writing is simply repeated: at least once);
    - another tick is inserted running, leased to the executor, which starts it as
      soon as this commits, while it has free slots.
    The rest are left pending for any replica's executors. `now` overrides the
    database clock (tests); the default lets the database decide what is due.
    `operator_alerts`: SCHEDULER_ALERT_URL is set (an overlap skip writes job.missed).
    `stats` counts the runs it finished for the console. `floor`: the scheduler's
    reading of where unfinished runs can be (store/unfinished.py; None: everywhere).
    """
    reserved = 0
    try:
        async with pool.acquire() as conn, conn.transaction():
            jobs = await store.jobs_claim_due(conn, now, batch, tenants, floor)
            if not jobs:
                return PassResult(0, 0, False)
            advances, ticks = _pass_ticks(jobs, run_in_pass=executor is not None)
            by_id = {job.id: job for job in jobs}
            worker = None
            if executor is not None:
                worker = executor.worker_id
                # Straight to work: pending ticks due now (not those jitter puts later).
                # Every claimed job carries the pass's clock.
                pass_now = jobs[0].now
                pending = [
                    i
                    for i, tick in enumerate(ticks)
                    if tick.status == "pending" and (tick.due_at is None or tick.due_at <= pass_now)
                ]
                reserved = executor.reserve(len(pending))
                for i in pending[:reserved]:
                    lease_s = by_id[ticks[i].job_id].timeout_s + executor.lease_margin_s
                    ticks[i] = ticks[i]._replace(status="running", lease_s=lease_s)
            recorded = await store.runs_materialize(
                conn, advances, ticks, worker, operator_alerts=operator_alerts
            )
            ran = [run for run in recorded.others if run.status == "succeeded"]
            if ran:
                assert worker is not None
                _run_in_pass(by_id, ran, worker)
                # The lines are the runs: on disk before the commit that says they ran.
                logs.flush()
        if executor is not None:
            leased = [run for run in recorded.others if run.status == "running"]
            executor.adopt([_claimed(by_id[run.job_id], run) for run in leased], reserved)
            reserved = 0
    finally:
        if executor is not None and reserved:
            executor.adopt([], reserved)  # the pass failed: give the slots back
    for run in recorded.others:
        if run.status == "skipped":
            # A replica that falls behind skips thousands a second: the direct path.
            logs.hot_line(
                "scheduler_svc.engine.scheduler",
                "run_skipped",
                {
                    "job_id": run.job_id,
                    "run_id": run.id,
                    "tick": run.scheduled_for.isoformat(),
                    "worker": worker,
                    "reason": OVERLAP_SKIPPED,
                },
                {},
            )
    metrics.finished_in_pass(recorded.others)
    if stats is not None:
        stats.finished_in_pass(recorded.others, by_id)
    return PassResult(
        len(jobs),
        recorded.runs,
        len(jobs) == batch,
        for_executors=recorded.pending > 0,
    )


def _pass_ticks(jobs: list[DueJob], *, run_in_pass: bool) -> tuple[list[Advance], list[Tick]]:
    """Every claimed job's advance and ticks (job_ticks), for one pass."""
    advances: list[Advance] = []
    ticks: list[Tick] = []
    for job in jobs:
        try:
            advance, its_ticks = job_ticks(
                job, run_in_pass=run_in_pass and job.target.get("type") in RUN_IN_PASS
            )
        except schedule.ScheduleError as exc:
            # Only a schedule stored before a stricter parser could get here; stop
            # it rather than stall every pass on it.
            log.error("schedule_unreadable", job_id=job.id, error=str(exc))
            advance, its_ticks = Advance(job.id, None, "completed"), []
        advances.append(advance)
        ticks += its_ticks
    return advances, ticks


def _run_in_pass(jobs: dict[int, DueJob], runs: list[InsertedRun], worker: str) -> None:
    """Write the log lines of the runs this pass inserted succeeded."""
    for run in runs:
        job = jobs[run.job_id]
        log_line(
            job.id,
            job.name,
            run.id,
            run.scheduled_for,
            1,
            "schedule",
            job.tenant,
            job.attributes,
            worker=worker,
            status="succeeded",
            duration_ms=0,
        )


def _claimed(job: DueJob, run: InsertedRun) -> ClaimedRun:
    """A run this pass leased to the executor, as an executor's own claim returns it."""
    assert run.started_at is not None
    return ClaimedRun(
        id=run.id,
        job_id=job.id,
        tenant=job.tenant,
        scheduled_for=run.scheduled_for,
        trigger="schedule",
        attempt=1,
        started_at=run.started_at,
        lost_worker=None,
        due_at=run.due_at,
        name=job.name,
        attributes=job.attributes,
        target=job.target,
        timeout_s=job.timeout_s,
        max_attempts=job.max_attempts,
        backoff_s=job.backoff_s,
        backoff_max_s=job.backoff_max_s,
    )


class Scheduler:
    """The scheduler loop of one replica."""

    def __init__(
        self,
        pool: Pool,
        *,
        executor: LocalExecutor | None = None,
        batch: int = 500,
        lanes: int = 3,
        max_sleep_s: float = 5.0,
        tenants: Sequence[str] | None = None,
        operator_alerts: bool = False,
        stats: RunStats | None = None,
    ) -> None:
        self._pool = pool
        self._stats = stats  # the console's counts (rollup.py), if kept
        self._operator_alerts = operator_alerts  # SCHEDULER_ALERT_URL is set
        self._tenants = tenants  # whose jobs it claims (None: everyone's)
        self._executor = executor  # this replica's: passes hand ticks straight to it
        self._batch = batch
        self._lanes = lanes  # passes at once while a backlog lasts
        self._max_sleep_s = max_sleep_s
        self.wake = asyncio.Event()  # set by NOTIFY scheduler_jobs and at reconnects
        self._floor = store.UnfinishedFloor()  # where unfinished runs can be, as last read

    async def _sleep_s(self, jobs: int) -> float:
        """How long to wait for the next pass after one that claimed `jobs` (not full).
        Maintenance windows that are over are ended first (windows.py)."""
        due = await store.jobs_next_due(self._pool, self._tenants)
        if due.window_end_in_s is not None and due.window_end_in_s <= 0:
            await windows.resume_ended(self._pool, self._tenants)
            return PASS_GAP_S  # the resumed jobs may be due now
        gap = BUSY_PASS_GAP_S if jobs >= BUSY_PASS_JOBS else PASS_GAP_S
        known = [s for s in (due.tick_in_s, due.window_end_in_s) if s is not None]
        if not known:
            return self._max_sleep_s
        return min(max(min(known), gap), self._max_sleep_s)

    async def _pass(self) -> PassResult:
        result = await tick_once(
            self._pool,
            batch=self._batch,
            executor=self._executor,
            tenants=self._tenants,
            operator_alerts=self._operator_alerts,
            stats=self._stats,
            floor=self._floor,
        )
        if result.for_executors and self._executor is not None:
            self._executor.wake.set()
        return result

    async def _work_off_backlog(self, stop: asyncio.Event) -> None:
        """Passes on `lanes` independent lanes until one comes back not full. SKIP
        LOCKED gives each pass its own jobs; lanes that do not wait for each other
        drift apart, so one plans in Python while another waits for the database."""

        async def lane() -> None:
            while not stop.is_set() and (await self._pass()).full:
                pass

        outcomes = await asyncio.gather(
            *(lane() for _ in range(self._lanes)), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop`; database outages are waited out, not fatal."""
        retry_s = 0.1
        while not stop.is_set():
            self.wake.clear()
            try:
                result = await self._pass()
                if result.full:
                    await self._work_off_backlog(stop)
                    continue
                timeout = await self._sleep_s(result.jobs)
                retry_s = 0.1
            except DATABASE_ERRORS as exc:
                log.warning("scheduler_database_error", error=str(exc), retry_in_s=retry_s)
                timeout, retry_s = retry_s, min(retry_s * 2, 5.0)
            await wait_any(timeout, stop, self.wake)
