"""Executors: lease pending runs, deliver them to their targets, record what came of it.

One statement at a time both records the results of finished attempts (matching
the lease, so that a run another replica took over is never overwritten) and leases
more runs (SKIP LOCKED, never more than free slots); it commits before any network
I/O. Each run then executes in its own task under the job's timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from scheduler_svc import logs, metrics, store, tracing
from scheduler_svc.engine.aio import wait_any
from scheduler_svc.engine.attempts import delivery_of, result_of
from scheduler_svc.engine.cancels import Cancels
from scheduler_svc.engine.rollup import RunStats
from scheduler_svc.models import ClaimedRun, RunResult
from scheduler_svc.schedule import overlap
from scheduler_svc.store.db import DATABASE_ERRORS, Pool
from scheduler_svc.targets import Deliverer, Outcome

_LOGGER = "scheduler_svc.engine.executor"
log = structlog.get_logger(_LOGGER)

# How long a stopping executor keeps trying to write its last results.
FINAL_WRITE_S = 10.0
# Results written per statement at most (larger batches only lengthen a transaction).
RECORD_BATCH = 200
# How long a finished attempt's result may wait for others to be recorded with it.
RECORD_GAP_S = 0.02
# How often a busy executor looks for runs whose lease ran out (it also looks when a
# lease it knows of runs out). Leases last the job's timeout plus a margin of
# seconds, so this delays no takeover by more than it.
LEASE_CHECK_S = 1.0


class Executor:
    """One replica's executors: up to `concurrency` runs at once."""

    def __init__(
        self,
        pool: Pool,
        deliverer: Deliverer,
        *,
        worker_id: str,
        concurrency: int = 32,
        lease_margin_s: float = 10.0,
        claim_batch: int = 100,
        max_sleep_s: float = 5.0,
        tenants: Sequence[str] | None = None,
        operator_alerts: bool = False,
        stats: RunStats | None = None,
    ) -> None:
        self._pool = pool
        self._deliverer = deliverer
        self.worker_id = worker_id
        self._concurrency = concurrency
        self.lease_margin_s = lease_margin_s
        self._claim_batch = claim_batch
        self._max_sleep_s = max_sleep_s
        self._tenants = tenants  # whose runs it leases (None: everyone's)
        self._operator_alerts = operator_alerts  # SCHEDULER_ALERT_URL is set
        self._stats = stats  # the console's counts (rollup.py), if kept
        self.wake = asyncio.Event()  # set by NOTIFY scheduler_runs and by this replica's scheduler
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self.cancels = Cancels(pool, worker_id, self._inflight)  # POST /runs/{id}/cancel
        self._floor = store.UnfinishedFloor()  # where unfinished runs can be, as last read
        self._reserved = 0  # slots held for runs a scheduler pass is leasing to us
        self._results: list[RunResult] = []
        self._attempts: dict[int, ClaimedRun] = {}  # the runs of those results, for the log
        self._attempt_done = asyncio.Event()  # a slot free
        # Set RECORD_GAP_S after the first result no exchange has taken yet.
        self._record_due = asyncio.Event()
        self._record_timer: asyncio.TimerHandle | None = None
        # Loop times: when to look for expired leases next, and when the next lease
        # the last look saw runs out.
        self._lease_check_at = 0.0
        self._lease_end_at: float | None = None
        # With traces on, each attempt in a span (tracing.py): decided here, not per run.
        self._attempt = tracing.traced_attempts(self.execute, worker_id)

    # --- the pass: exchange, execute -------------------------------------------

    async def exchange_once(self, claim: int) -> store.Exchange:
        """Record the results collected so far and lease up to `claim` more runs.

        The leased runs are returned, not started. Results the database did not take
        stay collected for the next exchange.
        """
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        self._record_due.clear()
        batch, self._results = self._results[:RECORD_BATCH], self._results[RECORD_BATCH:]
        now = asyncio.get_running_loop().time()
        leases = claim > 0 and (
            now >= self._lease_check_at
            or (self._lease_end_at is not None and now >= self._lease_end_at)
        )
        try:
            exchange = await store.runs_exchange(
                self._pool,
                self.worker_id,
                batch,
                claim,
                self.lease_margin_s,
                leases=leases,
                tenants=self._tenants,
                operator_alerts=self._operator_alerts,
                floor=self._floor,
            )
        except BaseException:
            self._results = batch + self._results
            raise
        if leases:
            self._lease_check_at = now + LEASE_CHECK_S
            end_in = exchange.next_lease_end_in_s
            self._lease_end_at = None if end_in is None else now + end_in
        metrics.leased(exchange.leased, claim)
        attempts = [(result, self._attempts.pop(result.run_id, None)) for result in batch]
        if self._stats is not None:
            self._stats.leased(exchange.leased)
            self._stats.recorded(attempts, exchange.recorded)
        lost = [(result, run) for result, run in attempts if result.run_id not in exchange.recorded]
        if lost:  # the run was cancelled, or another replica took it over
            await self.cancels.unrecorded(lost)
        return exchange

    async def settle_waiting(self, exchange: store.Exchange) -> int:
        """Decide the waiting runs an exchange found decidable (overlap.settle_waiting);
        how many were released. A failure is only logged: the lease check finds the
        runs again (stranded_jobs) within seconds."""
        if not exchange.ended_with_waiters and not exchange.stranded_jobs:
            return 0
        ended = exchange.ended_with_waiters
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                jobs = await store.runs_waiting_lock(conn, ended, exchange.stranded_jobs)
                spans, now = await store.runs_waiting_get(conn, jobs, ended)
                settlements = overlap.settle_waiting(spans, ended, now)
                if not settlements:
                    return 0
                released = await store.runs_waiting_settle(
                    conn,
                    settlements,
                    overlap.OVERLAP_SKIPPED,
                    operator_alerts=self._operator_alerts,
                )
        except DATABASE_ERRORS as exc:
            log.warning("waiting_runs_not_settled", error=str(exc), worker=self.worker_id)
            return 0
        runs = {span.id: span for span in spans}
        skipped = [runs[s.id] for s in settlements if s.action == "skip"]
        metrics.skipped(len(skipped))
        if self._stats is not None:
            for run in skipped:
                self._stats.skipped(run.tenant)
            for settled in settlements:
                span = runs[settled.id]
                self._stats.changed(span.tenant, span.job_id)
        for run in skipped:
            log.info(
                "run_skipped",
                job_id=run.job_id,
                run_id=run.id,
                tick=run.scheduled_for.isoformat(),
                attempt=0,
                worker=self.worker_id,
                reason=overlap.OVERLAP_SKIPPED,
            )
        return released

    async def claim_once(self, limit: int) -> list[ClaimedRun]:
        """Lease up to `limit` claimable runs to this worker (recording what is collected)."""
        return (await self.exchange_once(limit)).leased

    async def execute(self, run: ClaimedRun) -> RunResult:
        """Run one attempt under the job's timeout; never raises for the target's failures."""
        with logs.bound(
            job_id=run.job_id,
            run_id=run.id,
            tick=run.scheduled_for.isoformat(),
            attempt=run.attempt,
            worker=self.worker_id,
        ):
            if run.lost_worker is not None:
                log.warning("lease_taken_over", from_worker=run.lost_worker)
            else:
                # At debug: at thousands of runs a second a second line per run cost
                # as much as the call's own Python work. The run's start is in the
                # runs table (started_at), and run_attempted says how long it took.
                log.debug("run_started", trigger=run.trigger)
            started = time.perf_counter()
            if run.attempt > run.max_attempts:
                outcome = Outcome(
                    ok=False,
                    error=f"its worker {run.lost_worker} stopped during the last attempt",
                    retryable=False,
                )
            else:
                outcome = await self._deliver(run)
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            result = result_of(run, outcome, duration_ms)
            metrics.attempted(result)
            logs.hot_line(
                _LOGGER,
                "run_attempted",
                {
                    "status": result.status,
                    "duration_ms": duration_ms,
                    "retry_in_s": None if result.delay_s is None else round(result.delay_s, 3),
                },
                {"error": result.error},
            )
            return result

    async def _deliver(self, run: ClaimedRun) -> Outcome:
        try:
            async with asyncio.timeout(run.timeout_s):
                return await self._deliverer.deliver(delivery_of(run))
        except TimeoutError:
            return Outcome(ok=False, error=f"timed out after {run.timeout_s} s", retryable=True)

    # --- runs leased by this replica's scheduler: the LocalExecutor side of the seam ---

    def _free_slots(self) -> int:
        return max(0, self._concurrency - len(self._inflight) - self._reserved)

    def reserve(self, wanted: int) -> int:
        """Hold up to `wanted` free slots for runs a scheduler pass is about to lease
        to this worker; returns how many. `adopt` gives them back."""
        held = min(wanted, self._free_slots())
        self._reserved += held
        return held

    def adopt(self, runs: list[ClaimedRun], reserved: int) -> None:
        """Start runs a scheduler pass leased to this worker (committed), releasing
        the `reserved` slots it held for them."""
        self._reserved -= reserved
        metrics.leased(runs, claim=0)
        if self._stats is not None:
            self._stats.leased(runs)
        for run in runs:
            self._start(run)

    # --- the loop ----------------------------------------------------------------

    def cancel(self, run_id: int) -> None:
        """NOTIFY scheduler_cancel: stop the run's attempt if it is under way here, and look
        at leases in the next exchange (runs that waited for it are decided there)."""
        self.cancels.hear(run_id)
        self._lease_check_at = 0.0
        self.wake.set()

    def _collect(self, result: RunResult, run: ClaimedRun) -> None:
        """Hold a result for the next exchange."""
        self._results.append(result)
        self._attempts[run.id] = run
        if self._record_timer is None:
            # Finished attempts are recorded together, not each on its own round
            # trip: at thousands of runs a second those trips were most of the
            # database's work. The slot is free already; only the record waits.
            self._record_timer = asyncio.get_running_loop().call_later(
                RECORD_GAP_S, self._record_due.set
            )

    def _start(self, run: ClaimedRun) -> None:
        if self.cancels.stopped(run):  # cancelled between its lease and now
            return

        async def execute_and_collect() -> None:
            try:
                result = await self._attempt(run)
            except asyncio.CancelledError:
                if not self.cancels.stopped(run):
                    raise  # stopping (drain), not a cancel
                return  # nothing to record: the run is final already
            # Only now look up the list: exchange_once replaces it while we await.
            self._collect(result, run)

        task = asyncio.create_task(execute_and_collect(), name=f"run-{run.id}")
        self._inflight[run.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._inflight.pop(run.id, None)
            self._attempt_done.set()

        task.add_done_callback(done)

    async def run(self, stop: asyncio.Event) -> None:
        """Exchange results for new runs until `stop`; `drain` then finishes the rest.

        One round trip both records what finished and leases more, never more than
        the free slots. With nothing to do it sleeps until a run comes due, a lease
        runs out, a NOTIFY wakes it, or a finished attempt is to be recorded.
        """
        retry_s = 0.1
        while not stop.is_set():
            self.wake.clear()
            self._attempt_done.clear()
            claim = min(self._free_slots(), self._claim_batch)
            sleep_s = self._max_sleep_s
            try:
                if claim > 0 or self._results:
                    exchange = await self.exchange_once(claim)
                    for run in exchange.leased:
                        self._start(run)
                    released = await self.settle_waiting(exchange)
                    if self._results or (claim > 0 and len(exchange.leased) == claim):
                        continue  # more to record, or more may be ready right now
                    if released and claim > len(exchange.leased):
                        continue  # runs whose wait just ended: claim them now
                    if exchange.next_attempt_in_s is not None:
                        sleep_s = min(exchange.next_attempt_in_s, self._max_sleep_s)
                    if claim > 0 and self._lease_end_at is not None:
                        # Wake when the next lease runs out: its run may be ours to take over.
                        lease_end_in = self._lease_end_at - asyncio.get_running_loop().time()
                        sleep_s = max(0.0, min(sleep_s, lease_end_in))
                retry_s = 0.1
            except DATABASE_ERRORS as exc:
                log.warning("executor_database_error", error=str(exc), retry_in_s=retry_s)
                sleep_s, retry_s = retry_s, min(retry_s * 2, 5.0)
            # With free slots, runs waiting for one wake us (NOTIFY, or this replica's
            # scheduler); with every slot busy, the end of an attempt does.
            wake_on = self.wake if claim > 0 else self._attempt_done
            await wait_any(sleep_s, stop, wake_on, self._record_due)

    async def drain(self, grace_s: float) -> None:
        """Let in-flight runs finish for up to `grace_s`, record them, and put the rest
        back as pending without using up their attempt."""
        if self._inflight:
            log.info("draining", runs=len(self._inflight), grace_s=grace_s)
            await asyncio.wait(list(self._inflight.values()), timeout=grace_s)
        unfinished = list(self._inflight)
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        # The last writes must happen even if whoever awaits drain is cancelled.
        await asyncio.shield(self._finish(unfinished))

    async def _finish(self, unfinished: list[int]) -> None:
        try:
            async with asyncio.timeout(FINAL_WRITE_S):
                retry_s = 0.1
                while self._results:
                    try:
                        await self.settle_waiting(await self.exchange_once(0))
                    except DATABASE_ERRORS as exc:
                        log.warning("record_database_error", error=str(exc))
                        await asyncio.sleep(retry_s)
                        retry_s = min(retry_s * 2, 2.0)
        except TimeoutError:
            # Unrecorded runs keep their lease until it expires; then another
            # replica runs them again: at least once, never lost.
            log.warning("results_not_recorded", runs=len(self._results))
        if unfinished:
            try:
                await store.runs_release(self._pool, self.worker_id, unfinished)
                log.info("runs_released", runs=len(unfinished))
            except DATABASE_ERRORS as exc:
                # Their leases expire and another replica takes them over.
                log.warning("release_failed", runs=len(unfinished), error=str(exc))
