"""GET /alerts: the tenant's alerts (SPEC §8) and how their delivery went, newest first."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.params import QueryParameter

from scheduler_svc import store
from scheduler_svc.api.paging import decode_cursor, next_link
from scheduler_svc.api.reads import ReadsDep
from scheduler_svc.api.routes import TenantDep
from scheduler_svc.models import MAX_ID, AlertOut
from scheduler_svc.store.alerts import AlertRow


def alert_out(row: AlertRow) -> AlertOut:
    """The API view of a stored alert (not its url, which may carry a token)."""
    error = row.body.get("error")
    return AlertOut(
        id=row.id,
        event=row.event,
        job_id=row.job_id,
        job_name=row.job_name,
        run_id=row.run_id,
        scheduled_for=row.scheduled_for,
        error=error if isinstance(error, str) else None,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )


@get(
    "/alerts",
    operation_id="listAlerts",
    summary="Alerts and their delivery, newest first",
    tags=["alerts"],
)
async def list_alerts(
    request: Request[Any, Any, Any],
    tenant: TenantDep,
    reads: ReadsDep,
    job_id: Annotated[
        int | None,
        QueryParameter(ge=1, le=MAX_ID, description="Only this job's (deleted jobs' too)."),
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
) -> Response[list[AlertOut]]:
    """The tenant's alerts, with each one's delivery status (pending, delivered, failed),
    attempts and last error; cursor-paged through the Link header."""
    before_id = decode_cursor(cursor) if cursor is not None else None
    rows = await reads.run(store.alerts_list, tenant, job_id, before_id=before_id, limit=limit + 1)
    return Response([alert_out(r) for r in rows[:limit]], headers=next_link(request, rows, limit))
