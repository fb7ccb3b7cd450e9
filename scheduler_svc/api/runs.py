"""Cancelling a run (SPEC §8): POST /runs/{id}/cancel.

One statement decides (store.run_cancel): a run pending or running when it commits ends
`cancelled`, audited in the same transaction, and a result that arrives later is
dropped. The executor holding a running attempt hears of it by NOTIFY scheduler_cancel
and stops it (engine/cancels.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from litestar import Request, post
from litestar.params import PathParameter

from scheduler_svc import audit as trail
from scheduler_svc import metrics, store
from scheduler_svc.api import writes
from scheduler_svc.api.openapi import problem_responses
from scheduler_svc.api.routes import AuditDep, PoolDep, TenantDep
from scheduler_svc.api.views import run_out
from scheduler_svc.errors import NotFound, RunFinal, UpgradeInProgress
from scheduler_svc.models import MAX_ID, RunOut, RunRow, RunStatus
from scheduler_svc.store import Connection
from scheduler_svc.store.db import Pool

log = structlog.get_logger("scheduler_svc.api.runs")

RunId = Annotated[int, PathParameter(ge=1, le=MAX_ID, description="The run's id.")]


@post(
    "/runs/{run_id:int}/cancel",
    operation_id="cancelRun",
    summary="Cancel a pending or running run",
    description=(
        "The run ends `cancelled` at once; an attempt under way is stopped on the replica"
        " that runs it within about a second, and is not retried. The body is optional"
        " and ignored. A run that has already ended is a 409 whose `run_status` says how;"
        " while a replica of the release before this one is still connected, a 409"
        " `upgrade-in-progress`."
    ),
    tags=["runs"],
    status_code=200,
    responses=problem_responses(409),
)
async def cancel_run(
    request: Request[Any, Any, Any],
    run_id: RunId,
    pool: PoolDep,
    tenant: TenantDep,
    audit: AuditDep,
) -> RunOut:
    """Cancel a run that is pending or running; the run, now cancelled."""
    row = await cancel(pool, tenant, run_id, audit)
    count_cancelled(request, row)
    return run_out(row)


def count_cancelled(request: Request[Any, Any, Any], run: RunRow) -> None:
    """Count a cancel in the console's counts of runs, and tell the consoles (engine/
    rollup.py, kept by app.py's lifespan as app.state.run_stats)."""
    run_stats = getattr(request.app.state, "run_stats", None)
    if run_stats is not None:
        run_stats.cancelled(run.tenant, run.job_id)


async def cancel(pool: Pool, tenant: str, run_id: int, audit: trail.AuditContext) -> RunRow:
    """Cancel a run that is pending or running (the API's and the console's); the run."""
    # A replica of the release before cancel reads runs into a type without `cancelled`:
    # it would answer 500 for this run until retention drops it. One look at
    # pg_stat_activity while the roll may be going on, rather than that.
    if await store.older_releases_connected(pool):
        raise UpgradeInProgress()

    async def work(conn: Connection) -> tuple[RunRow, RunStatus] | None:
        cancelled = await store.run_cancel(conn, tenant, run_id)
        if cancelled is not None:
            row, previous = cancelled
            changes = {"status": [previous, row.status]}
            await trail.record(
                conn, tenant, audit, "run.cancel", job_id=row.job_id, run_id=row.id, changes=changes
            )
        return cancelled

    cancelled = await writes.transaction(pool, work)
    if cancelled is None:
        run = await store.run_get(pool, tenant, run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist")
        raise RunFinal(run_id, run.status)
    row, previous = cancelled
    metrics.cancelled()
    # The executor that held a running attempt logs run_cancelled when it stops it.
    log.info(
        "run_cancel",
        job_id=row.job_id,
        run_id=row.id,
        tick=row.scheduled_for.isoformat(),
        attempt=row.attempt,
        worker=row.worker,
        previous_status=previous,
    )
    return row
