"""What the console learns from the engine: the rollup of runs per minute (table
run_minutes), which its overview reads instead of the run history, and the pulse of
changes that keeps its pages live.

Each process counts, in memory, what it sees end: the runs a scheduler pass ran or
skipped, the results its executor recorded (succeeded, failed, or to be retried), the
waiting runs it skipped, the runs its API cancelled; and the fire lag of first attempts
of scheduled runs, by bucket (models/stats.py). Counts are kept by tenant and by the
minute of this process's clock in which it saw them. Every few seconds they are added to
the process's own rows in one statement; counts the database did not take are kept for
the next flush.

The pulse: the jobs whose runs this process changed (a pass advanced them and inserted
their runs; an exchange leased or recorded them; waiting ones were settled; the API
cancelled one) are told to the consoles on the channel scheduler_console, by tenant,
every PULSE_EVERY_S, in one statement: as schema.sql's jobs triggers tell the API's
changes, but batched, where a trigger on job_runs cost every write of a run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import msgspec
import structlog

from scheduler_svc import store
from scheduler_svc.engine.aio import wait_any
from scheduler_svc.models import (
    LAG_BUCKETS_MS,
    ClaimedRun,
    DueJob,
    InsertedRun,
    MinuteStats,
    RunResult,
    lag_bucket,
)
from scheduler_svc.store.db import DATABASE_ERRORS, Pool

log = structlog.get_logger("scheduler_svc.engine.rollup")

# How often counts are written.
FLUSH_EVERY_S = 5.0
# How often the jobs changed meanwhile are told to the consoles (their streams batch
# what they hear over a quarter second as well: console/live.py).
PULSE_EVERY_S = 0.25
# Past this many jobs of a tenant in one pulse, it says "many" (null) instead.
PULSE_JOBS = 50
# Counts the database would not take are kept this long, then dropped with a warning: a
# long outage costs the overview those minutes, not the replica its memory.
KEEP_UNWRITTEN_S = 3600
# How long the last flush, at stop, may take.
LAST_FLUSH_S = 5.0

# A tenant's counts in one minute: the outcomes, then one count per lag bucket.
SUCCEEDED, FAILED, SKIPPED, CANCELLED, RETRIED = range(5)
_LAG = 5
_WIDTH = _LAG + len(LAG_BUCKETS_MS)
# Where an attempt's result is counted ("pending": it is to be tried again).
_OUTCOME = {"succeeded": SUCCEEDED, "failed": FAILED, "pending": RETRIED}

Minutes = dict[int, dict[str, list[int]]]  # minute (Unix seconds) → tenant → counts


class RunStats:
    """One process's counts of runs by tenant and minute, written to run_minutes.

    Counting is a clock read, a dict look-up and an increment, with a list allocated
    only for a tenant's first count in a minute; only `flush` does I/O.
    """

    def __init__(
        self, pool: Pool, worker_id: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._pool = pool
        self.worker_id = worker_id
        self._clock = clock
        self._pending: Minutes = {}
        # The current minute's counts by tenant, and when that minute ends: counting
        # looks no further while the minute lasts.
        self._minute: dict[str, list[int]] = {}
        self._minute_end = 0.0
        # The jobs changed since the last pulse, by tenant (None: more than PULSE_JOBS).
        self._changed: dict[str, set[int] | None] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _counts(self, tenant: str) -> list[int]:
        now = self._clock()
        if not self._minute_end - 60 <= now < self._minute_end:  # a new minute, or a flush
            start = int(now // 60) * 60
            self._minute_end = start + 60.0
            self._minute = self._pending.setdefault(start, {})
        counts = self._minute.get(tenant)
        if counts is None:
            counts = self._minute[tenant] = [0] * _WIDTH
        return counts

    # --- counting ----------------------------------------------------------------

    def changed(self, tenant: str, job_id: int) -> None:
        """Note a job whose runs changed, for the next pulse."""
        if tenant not in self._changed:
            self._changed[tenant] = {job_id}
            return
        jobs = self._changed[tenant]
        if jobs is not None:
            jobs.add(job_id)
            if len(jobs) > PULSE_JOBS:
                self._changed[tenant] = None

    def recorded(self, attempts: list[tuple[RunResult, ClaimedRun | None]], ids: set[int]) -> None:
        """Count the results an exchange recorded (`ids`): only those, so that a result
        dropped because the run was cancelled or taken over is not counted as well."""
        for result, run in attempts:
            if run is not None and result.run_id in ids:
                self._counts(run.tenant)[_OUTCOME[result.status]] += 1
                self.changed(run.tenant, run.job_id)

    def leased(self, runs: list[ClaimedRun]) -> None:
        """Count the fire lag of the first attempts of scheduled runs among `runs`, as
        metrics.leased measures it."""
        for run in runs:
            self.changed(run.tenant, run.job_id)
            if run.trigger == "schedule" and run.attempt == 1:
                due = run.due_at or run.scheduled_for
                lag_s = (run.started_at - due).total_seconds()
                self._counts(run.tenant)[_LAG + lag_bucket(lag_s)] += 1

    def finished_in_pass(self, runs: list[InsertedRun], jobs: Mapping[int, DueJob]) -> None:
        """Count the runs a scheduler pass inserted finished, with the fire lag of those it
        ran itself; `jobs`, the pass's claimed jobs by id, know each run's tenant. Every
        claimed job changed: it advanced, and its runs were inserted."""
        for job in jobs.values():
            self.changed(job.tenant, job.id)
        for run in runs:
            if run.status == "succeeded":
                counts = self._counts(jobs[run.job_id].tenant)
                counts[SUCCEEDED] += 1
                if run.started_at is not None:
                    due = run.due_at or run.scheduled_for
                    counts[_LAG + lag_bucket((run.started_at - due).total_seconds())] += 1
            elif run.status == "skipped":
                self._counts(jobs[run.job_id].tenant)[SKIPPED] += 1

    def skipped(self, tenant: str) -> None:
        """Count a waiting run skipped once the run it waited for ended (overlap)."""
        self._counts(tenant)[SKIPPED] += 1

    def cancelled(self, tenant: str, job_id: int) -> None:
        """Count a run of `job_id` cancelled through the API (by the process that answered)."""
        self._counts(tenant)[CANCELLED] += 1
        self.changed(tenant, job_id)

    # --- the pulse -----------------------------------------------------------------

    async def pulse(self) -> None:
        """Tell the consoles which jobs changed since the last pulse, one notification a
        tenant. A pulse the database did not take is dropped: the next change, or a
        console's own reload, shows the page again."""
        if not self._changed:
            return
        changed, self._changed = self._changed, {}
        payloads = [
            msgspec.json.encode({"t": tenant, "j": None if jobs is None else sorted(jobs)})
            for tenant, jobs in changed.items()
        ]
        try:
            await store.console_pulse(self._pool, [p.decode() for p in payloads])
        except DATABASE_ERRORS as exc:
            log.debug("console_pulse_not_sent", error=str(exc))

    # --- writing -----------------------------------------------------------------

    @property
    def unwritten(self) -> int:
        """How many counts (outcomes and lags) are not written yet."""
        return sum(sum(c) for tenants in self._pending.values() for c in tenants.values())

    async def flush(self) -> bool:
        """Add the counts so far to this process's rows of run_minutes, in one statement;
        whether it did. On a database error the counts are kept for the next flush, and
        those of minutes older than KEEP_UNWRITTEN_S are dropped."""
        if not self._pending:
            return True
        pending, self._pending = self._pending, {}
        self._minute_end = 0.0  # the next count starts the minute again, in the new dict
        rows = [
            (tenant, _minute_stats(start, counts))
            for start, tenants in pending.items()
            for tenant, counts in tenants.items()
        ]
        try:
            await store.run_minutes_add(self._pool, self.worker_id, rows)
        except DATABASE_ERRORS as exc:
            self._keep(pending)
            log.warning("run_stats_not_written", error=str(exc), counts=self.unwritten)
            return False
        except BaseException:
            self._keep(pending)
            raise
        return True

    def _keep(self, unwritten: Minutes) -> None:
        """Put counts that were not written back with those counted since."""
        oldest = self._clock() - KEEP_UNWRITTEN_S
        dropped = 0
        for start, tenants in unwritten.items():
            if start + 60 <= oldest:
                dropped += sum(sum(c) for c in tenants.values())
                continue
            kept = self._pending.setdefault(start, {})
            for tenant, counts in tenants.items():
                now = kept.setdefault(tenant, counts)
                if now is not counts:
                    for i, count in enumerate(counts):
                        now[i] += count
        if dropped:
            log.warning("run_stats_dropped", counts=dropped, older_than_s=KEEP_UNWRITTEN_S)

    async def run(self, stop: asyncio.Event) -> None:
        """Pulse every PULSE_EVERY_S and flush every FLUSH_EVERY_S until `stop`; the owner
        flushes a last time after (`flush_last`), once nothing counts any more."""
        loop = asyncio.get_running_loop()
        flush_at = loop.time() + FLUSH_EVERY_S
        while not stop.is_set():
            await wait_any(PULSE_EVERY_S, stop)
            if stop.is_set():
                break
            await self.pulse()
            if loop.time() >= flush_at:
                flush_at = loop.time() + FLUSH_EVERY_S
                await self.flush()

    async def flush_last(self) -> None:
        """Flush once more, for up to LAST_FLUSH_S; say how many counts were lost if not."""
        written = False
        try:
            async with asyncio.timeout(LAST_FLUSH_S):
                written = await self.flush()
        except TimeoutError:
            pass
        if not written:
            log.warning("run_stats_lost", counts=self.unwritten, worker=self.worker_id)

    def start(self) -> None:
        """Flush in the background until `stop` (for a process without a worker, whose
        TaskGroup would run the loop otherwise)."""
        self._task = asyncio.create_task(self.run(self._stop), name="run-stats")

    async def stop(self) -> None:
        """Stop what `start` began and flush a last time."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.flush_last()


def _minute_stats(start: int, counts: list[int]) -> MinuteStats:
    return MinuteStats(
        minute=datetime.fromtimestamp(start, UTC),
        succeeded=counts[SUCCEEDED],
        failed=counts[FAILED],
        skipped=counts[SKIPPED],
        cancelled=counts[CANCELLED],
        retried=counts[RETRIED],
        lag_counts=tuple(counts[_LAG:]),
    )
