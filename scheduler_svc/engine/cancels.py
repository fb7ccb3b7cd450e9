"""Cancelled runs as one replica's executor meets them (POST /runs/{id}/cancel, SPEC §8).

The API's statement decides: a run that was pending or running when it committed is
`cancelled`, its lease gone, and NOTIFY scheduler_cancel names it. The executor holding
its attempt stops it and records nothing (the row is final already). A result that was
made anyway is dropped by runs_exchange, which records only runs still leased; the
executor then asks whether the run was cancelled, so that its log says so rather than
that another replica took the lease. A NOTIFY sent while the LISTEN connection was down
is lost: once it is back, the runs under way here are looked up once (Executor.recheck).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog

from scheduler_svc import store
from scheduler_svc.models import ClaimedRun, RunResult
from scheduler_svc.store.db import DATABASE_ERRORS, Pool

log = structlog.get_logger("scheduler_svc.engine.executor")

# How long a cancel heard of is remembered: long enough for a run leased here just before
# it was cancelled to reach its start, or its result the exchange that drops it. A
# cancelled run is final: it is never leased again, so forgetting it changes nothing.
HEARD_KEEP_S = 60.0


class Cancels:
    """The cancels one executor heard of, and what it does about them."""

    def __init__(self, pool: Pool, worker_id: str, held: Mapping[int, asyncio.Task[None]]):
        self._pool = pool
        self._worker_id = worker_id
        self._held = held  # the executor's attempts under way, by run id
        self._heard: dict[int, float] = {}  # run id → time.monotonic() it was heard of

    def hear(self, run_id: int) -> bool:
        """Run `run_id` was cancelled: stop its attempt if one is under way here (its task
        then logs run_cancelled); whether one was."""
        now = time.monotonic()
        if self._heard and next(iter(self._heard.values())) < now - HEARD_KEEP_S:
            self._heard = {r: at for r, at in self._heard.items() if at >= now - HEARD_KEEP_S}
        self._heard[run_id] = now
        task = self._held.get(run_id)
        if task is None:
            return False
        task.cancel()
        return True

    def stopped(self, run: ClaimedRun, **fields: object) -> bool:
        """Whether `run` was cancelled, as heard: if so its attempt is not to start or go
        on, and this logs run_cancelled."""
        if self._heard.pop(run.id, None) is None:
            return False
        self.log(run, **fields)
        return True

    def log(self, run: ClaimedRun, **fields: object) -> None:
        """The line of a run whose attempt was stopped, or whose result was dropped,
        because the run was cancelled."""
        log.info("run_cancelled", **_run_fields(run), worker=self._worker_id, **fields)

    async def among(self, run_ids: list[int]) -> set[int]:
        """Those of `run_ids` that were cancelled: heard of, or found so in the database
        (asked only about the others; none found if it does not answer)."""
        heard = {run_id for run_id in run_ids if run_id in self._heard}
        unknown = [run_id for run_id in run_ids if run_id not in heard]
        if not unknown:
            return heard
        try:
            return heard | await store.runs_cancelled(self._pool, unknown)
        except DATABASE_ERRORS as exc:
            log.warning("cancels_not_checked", runs=len(unknown), error=str(exc))
            return heard

    async def recheck(self) -> None:
        """Stop the attempts under way here whose run was cancelled while no NOTIFY could
        arrive (the LISTEN connection was down)."""
        if self._held:
            for run_id in await self.among(list(self._held)):
                self.hear(run_id)

    async def unrecorded(self, lost: list[tuple[RunResult, ClaimedRun | None]]) -> None:
        """Log the results an exchange did not record: dropped because their run was
        cancelled, or because another replica took the run over (or its job was deleted)
        meanwhile."""
        cancelled = await self.among([result.run_id for result, _ in lost])
        for result, run in lost:
            self._heard.pop(result.run_id, None)
            fields = {"run_id": result.run_id} if run is None else _run_fields(run)
            if result.run_id in cancelled:
                log.info(
                    "run_cancelled",
                    **fields,
                    worker=self._worker_id,
                    dropped_result=result.status,
                    duration_ms=result.duration_ms,
                )
            else:
                log.warning(
                    "lease_lost",
                    **fields,
                    worker=self._worker_id,
                    status=result.status,
                    duration_ms=result.duration_ms,
                )


def _run_fields(run: ClaimedRun) -> dict[str, object]:
    return {
        "job_id": run.job_id,
        "run_id": run.id,
        "tick": run.scheduled_for.isoformat(),
        "attempt": run.attempt,
    }
