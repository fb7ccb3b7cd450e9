"""The audit trail and run search over HTTP (SPEC §8): who acts in a request (the `audit`
dependency, an AuditContext for scheduler_svc/audit.py), GET /audit, GET
/jobs/{id}/audit and GET /runs. All three are history reads (`reads`: on the read
replica when it keeps up), newest first, cursor-paged as GET /jobs/{id}/runs is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, PathParameter, QueryParameter

from scheduler_svc import logs, store
from scheduler_svc.api.jobs import Rules
from scheduler_svc.api.paging import decode_cursor, next_link
from scheduler_svc.api.reads import ReadsDep
from scheduler_svc.api.views import run_out
from scheduler_svc.audit import AuditContext
from scheduler_svc.errors import InvalidRequest, NotFound
from scheduler_svc.models import MAX_ID, AuditOut, RunOut, RunStatus
from scheduler_svc.security.principals import Principal
from scheduler_svc.store.db import Pool

Limit = Annotated[int, QueryParameter(ge=1, le=500, description="Page size.")]
Cursor = Annotated[
    str | None, QueryParameter(max_length=64, description="From the Link header of a page.")
]
Timestamp = Annotated[str | None, QueryParameter(max_length=64, description="RFC 3339.")]
Id = Annotated[int, PathParameter(ge=1, le=MAX_ID, description="The job's id.")]


def provide_audit(request: Request[Any, Any, Any], rules: NamedDependency[Rules]) -> AuditContext:
    """The `audit` dependency (app.create_app): who this request acts as, and its id.

    It takes `rules` only to be resolved after it: Litestar resolves dependencies that
    wait on nothing else together, in a task group, which costs more than this does.
    """
    principal = request.scope.get("user")
    actor = "open"
    if isinstance(principal, Principal) and principal.kind != "open":
        actor = principal.name  # the key's prefix, or the token's subject
    return AuditContext(actor, logs.request_id())


@get("/audit", operation_id="listAudit", summary="The audit trail, newest first", tags=["audit"])
async def list_audit(
    request: Request[Any, Any, Any],
    tenant: NamedDependency[str],
    reads: ReadsDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response[list[AuditOut]]:
    """Every change made to this tenant's jobs and runs through the API, newest first."""
    before_id = decode_cursor(cursor) if cursor is not None else None
    rows = await reads.run(store.audit_list, tenant, before_id=before_id, limit=limit + 1)
    return Response(rows[:limit], headers=next_link(request, rows, limit))


@get(
    "/jobs/{job_id:int}/audit",
    operation_id="listJobAudit",
    summary="A job's audit trail, newest first (a deleted job's too)",
    tags=["jobs"],
)
async def list_job_audit(
    job_id: Id,
    request: Request[Any, Any, Any],
    pool: NamedDependency[Pool],
    tenant: NamedDependency[str],
    reads: ReadsDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response[list[AuditOut]]:
    """The changes made to one job through the API, newest first; its deletion included."""
    before_id = decode_cursor(cursor) if cursor is not None else None
    rows = await reads.run(
        store.audit_list_job, tenant, job_id, before_id=before_id, limit=limit + 1
    )
    # No trail and no job: an id this tenant never had (the primary says; a replica may
    # not have the job yet). A deleted job keeps its trail, so it answers 200.
    if not rows and cursor is None and await store.job_get(pool, tenant, job_id) is None:
        raise NotFound(f"job {job_id} has no audit trail and does not exist")
    return Response(rows[:limit], headers=next_link(request, rows, limit))


@get("/runs", operation_id="searchRuns", summary="Search runs, newest first", tags=["runs"])
async def search_runs(
    request: Request[Any, Any, Any],
    tenant: NamedDependency[str],
    reads: ReadsDep,
    status: FromQuery[RunStatus | None] = None,
    job_id: Annotated[int | None, QueryParameter(ge=1, le=MAX_ID)] = None,
    since: Timestamp = None,
    until: Timestamp = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response[list[RunOut]]:
    """This tenant's runs across its jobs, newest first, of one status or job if given,
    whose tick (scheduled_for) is at or after `since` and before `until`."""
    start = parse_time("since", since) if since is not None else None
    end = parse_time("until", until) if until is not None else None
    if start is not None and end is not None and end <= start:
        raise InvalidRequest.field("until", "must be after since")
    before_id = decode_cursor(cursor) if cursor is not None else None
    rows = await reads.run(
        store.runs_search,
        tenant,
        status=status,
        job_id=job_id,
        since=start,
        until=end,
        before_id=before_id,
        limit=limit + 1,
    )
    return Response([run_out(r) for r in rows[:limit]], headers=next_link(request, rows, limit))


def parse_time(field: str, value: str) -> datetime:
    """An RFC 3339 query parameter as a UTC time; InvalidRequest naming `field` if it is not."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest.field(field, "is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise InvalidRequest.field(field, "needs a time zone offset or Z")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first UTC instant
        raise InvalidRequest.field(field, "is outside the years 1 to 9999 in UTC") from None
