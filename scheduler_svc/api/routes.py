"""HTTP routes. Each handler parses a Struct, calls one jobs/store function, returns a Struct."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import (
    FromQuery,
    HeaderParameter,
    JSONBody,
    PathParameter,
    QueryParameter,
)

from scheduler_svc import schedule as schedules
from scheduler_svc import store
from scheduler_svc.api import jobs, pausing, writes
from scheduler_svc.api.openapi import problem_responses
from scheduler_svc.api.paging import decode_cursor
from scheduler_svc.api.paging import next_link as _next_link
from scheduler_svc.api.reads import ReadsDep
from scheduler_svc.api.views import etag, job_out, run_out
from scheduler_svc.audit import AuditContext
from scheduler_svc.errors import FieldError, InvalidRequest, NotFound
from scheduler_svc.models import (
    MAX_ID,
    BulkRequest,
    BulkResult,
    JobCreate,
    JobOut,
    JobPatch,
    JobRow,
    JobStatus,
    PauseRequest,
    RunOut,
    SchedulePreview,
    Tag,
)
from scheduler_svc.store.db import Pool

# What the app provides to every handler (see app.create_app); history reads take
# `reads: ReadsDep` (api/reads.py) rather than the primary's pool.
PoolDep = NamedDependency[Pool]
TenantDep = NamedDependency[str]
RulesDep = NamedDependency[jobs.Rules]
# Who makes a change, for its audit row (scheduler_svc/audit.py).
AuditDep = NamedDependency[AuditContext]

JobId = Annotated[int, PathParameter(ge=1, le=MAX_ID, description="The job's id.")]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a create safely: the same key and body return the first job.",
    ),
]
Filter = Annotated[str | None, QueryParameter(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
IfMatch = Annotated[
    str | None,
    HeaderParameter(name="If-Match", description="The job's ETag; a stale one gets 412."),
]


T = TypeVar("T")


async def strict_body(request: Request[Any, Any, Any], body_type: type[T]) -> T:
    """The request body decoded with JSON's own types.

    Litestar converts bodies leniently ("10" becomes 10.0, "true" becomes True); the
    API promises exact types, so handlers decode the (cached) body again, strictly.
    """
    raw = await request.body()
    try:
        body: T = msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        raise InvalidRequest([FieldError.from_msgspec(str(exc))]) from None
    # PostgreSQL stores no NUL character in text or jsonb: refuse it here, by field, rather
    # than fail at the INSERT. In JSON a NUL can only arrive escaped, so most bodies skip this.
    if b"\\u0000" in raw:
        field = nul_field(msgspec.json.decode(raw))
        if field is not None:
            raise InvalidRequest.field(field, NO_NUL)
    return body


NO_NUL = "must not contain the NUL character (\\u0000), which cannot be stored"


def nul_field(value: Any, path: str = "") -> str | None:
    """The path (`a.b[0]`) of the first string or key within `value` holding a NUL, or None."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else key
            if "\x00" in key:
                return inner
            if (found := nul_field(item, inner)) is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := nul_field(item, f"{path}[{index}]")) is not None:
                return found
    return None


def job_response(row: JobRow, status_code: int = 200, **headers: str) -> Response[JobOut]:
    """A job as the API answers it: the job, with its version as the ETag."""
    return Response(job_out(row), status_code=status_code, headers={"ETag": etag(row), **headers})


_ETAG = re.compile(r'^(?:W/)?"(\d{1,10})"$')


def parse_if_match(value: str | None) -> int | None:
    """The version an If-Match names; None for absent or `*` (any version)."""
    if value is None or value.strip() == "*":
        return None
    match = _ETAG.match(value.strip())
    if match is None:
        raise InvalidRequest.field("If-Match", 'must be an ETag of this API, e.g. "3"')
    return int(match.group(1))


class JobsController(Controller):
    """Jobs: create, read, change, delete, pause and resume."""

    path = "/jobs"
    tags = ["jobs"]  # noqa: RUF012 - Litestar reads it as a class attribute

    @post(
        "/",
        operation_id="createJob",
        summary="Create a job",
        status_code=201,
        responses=problem_responses(409),
    )
    async def create_job(
        self,
        data: JSONBody[JobCreate],
        request: Request[Any, Any, Any],
        pool: PoolDep,
        tenant: TenantDep,
        rules: RulesDep,
        audit: AuditDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[JobOut]:
        data = await strict_body(request, JobCreate)
        row, replayed = await writes.create(pool, tenant, data, rules, idempotency_key, audit)
        headers = {"Location": f"/jobs/{row.id}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return job_response(row, 201, **headers)

    @get("/", operation_id="listJobs", summary="List jobs, newest first")
    async def list_jobs(
        self,
        request: Request[Any, Any, Any],
        pool: PoolDep,
        tenant: TenantDep,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
        status: FromQuery[JobStatus | None] = None,
        name: Filter = None,
        key: Filter = None,
        managed_by: Filter = None,
        tag: Annotated[
            list[Tag] | None,
            QueryParameter(max_items=20, description="Jobs having every tag given (repeat it)."),
        ] = None,
    ) -> Response[list[JobOut]]:
        before_id = decode_cursor(cursor) if cursor is not None else None
        rows = await store.jobs_list(
            pool,
            tenant,
            before_id=before_id,
            status=status,
            name=name,
            limit=limit + 1,
            key=key,
            managed_by=managed_by,
            tags=tag or (),
        )
        return Response(
            [job_out(r) for r in rows[:limit]], headers=_next_link(request, rows, limit)
        )

    # api/hot.py's lane answers in front of it (hot.py says why and when); the name is
    # how the lane finds it.
    @get("/{job_id:int}", operation_id="getJob", summary="Get a job", name="get_job")
    async def get_job(self, job_id: JobId, pool: PoolDep, tenant: TenantDep) -> Response[JobOut]:
        row = await store.job_get(pool, tenant, job_id)
        if row is None:
            raise NotFound(f"job {job_id} does not exist")
        return job_response(row)

    @patch(
        "/{job_id:int}",
        operation_id="updateJob",
        summary="Change a job's fields",
        responses=problem_responses(409, 412),
    )
    async def update_job(
        self,
        job_id: JobId,
        data: JSONBody[JobPatch],
        request: Request[Any, Any, Any],
        pool: PoolDep,
        tenant: TenantDep,
        rules: RulesDep,
        audit: AuditDep,
        if_match: IfMatch = None,
    ) -> Response[JobOut]:
        data = await strict_body(request, JobPatch)
        version = parse_if_match(if_match)
        row = await writes.update(pool, tenant, job_id, data, rules, version, audit)
        return job_response(row)

    @delete("/{job_id:int}", operation_id="deleteJob", summary="Delete a job and its runs")
    async def delete_job(
        self, job_id: JobId, pool: PoolDep, tenant: TenantDep, audit: AuditDep
    ) -> None:
        await writes.delete(pool, tenant, job_id, audit)

    @post(
        "/{job_id:int}/pause",
        operation_id="pauseJob",
        summary="Stop future ticks",
        description=(
            'The body is optional; `{"until": "<RFC 3339>"}` makes it a maintenance window:'
            " the job resumes by itself then (ticks inside the window are not run)."
        ),
        status_code=200,
    )
    async def pause_job(
        self,
        job_id: JobId,
        request: Request[Any, Any, Any],
        pool: PoolDep,
        tenant: TenantDep,
        rules: RulesDep,
        audit: AuditDep,
        data: JSONBody[PauseRequest | None] = None,
    ) -> Response[JobOut]:
        body = await strict_body(request, PauseRequest) if await request.body() else None
        until = body.until if body is not None else None
        row = await pausing.pause_one(pool, tenant, job_id, True, until, rules, audit)
        return job_response(row)

    @post(
        "/bulk/pause",
        operation_id="bulkPauseJobs",
        summary="Pause every job a filter matches, optionally until a time",
        status_code=200,
    )
    async def bulk_pause(
        self,
        data: JSONBody[BulkRequest],
        request: Request[Any, Any, Any],
        pool: PoolDep,
        tenant: TenantDep,
        rules: RulesDep,
        audit: AuditDep,
    ) -> BulkResult:
        body = await strict_body(request, BulkRequest)
        return await pausing.bulk(pool, tenant, body, True, rules, audit)

    @post(
        "/bulk/resume",
        operation_id="bulkResumeJobs",
        summary="Resume every job a filter matches",
        status_code=200,
    )
    async def bulk_resume(
        self,
        data: JSONBody[BulkRequest],
        request: Request[Any, Any, Any],
        pool: PoolDep,
        tenant: TenantDep,
        rules: RulesDep,
        audit: AuditDep,
    ) -> BulkResult:
        body = await strict_body(request, BulkRequest)
        return await pausing.bulk(pool, tenant, body, False, rules, audit)

    @post(
        "/{job_id:int}/trigger",
        operation_id="triggerJob",
        summary="Run once now, outside the schedule",
        status_code=202,
    )
    async def trigger_job(
        self, job_id: JobId, pool: PoolDep, tenant: TenantDep, audit: AuditDep
    ) -> RunOut:
        return run_out(await writes.trigger(pool, tenant, job_id, audit))

    @get("/{job_id:int}/runs", operation_id="listJobRuns", summary="A job's runs, newest first")
    async def list_runs(
        self,
        job_id: JobId,
        request: Request[Any, Any, Any],
        pool: PoolDep,
        tenant: TenantDep,
        reads: ReadsDep,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
    ) -> Response[list[RunOut]]:
        before_id = decode_cursor(cursor) if cursor is not None else None
        rows = await reads.run(
            store.runs_list, tenant, job_id, before_id=before_id, limit=limit + 1
        )
        # Whether the job exists is the primary's say: a replica may not have it yet.
        if not rows and await store.job_get(pool, tenant, job_id) is None:
            raise NotFound(f"job {job_id} does not exist")
        return Response(
            [run_out(r) for r in rows[:limit]], headers=_next_link(request, rows, limit)
        )

    @post(
        "/{job_id:int}/resume",
        operation_id="resumeJob",
        summary="Resume from now; missed ticks are not run",
        status_code=200,
    )
    async def resume_job(
        self, job_id: JobId, pool: PoolDep, tenant: TenantDep, rules: RulesDep, audit: AuditDep
    ) -> Response[JobOut]:
        row = await pausing.pause_one(pool, tenant, job_id, False, None, rules, audit)
        return job_response(row)


@get("/runs/{run_id:int}", operation_id="getRun", summary="Get a run", tags=["runs"])
async def get_run(
    run_id: Annotated[int, PathParameter(ge=1, le=MAX_ID, description="The run's id.")],
    pool: PoolDep,
    tenant: TenantDep,
) -> RunOut:
    """One run."""
    run = await store.run_get(pool, tenant, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run_out(run)


@get(
    "/schedules/preview",
    operation_id="previewSchedule",
    summary="Next fire times of a schedule",
    tags=["schedules"],
)
async def preview_schedule(
    rules: RulesDep,
    schedule: Annotated[str, QueryParameter(min_length=1, max_length=200)],
    timezone: Annotated[str, QueryParameter(min_length=1, max_length=64)] = "UTC",
    after: Annotated[
        str | None, QueryParameter(max_length=64, description="RFC 3339; default now")
    ] = None,
    count: Annotated[int, QueryParameter(ge=1, le=100)] = 5,
) -> SchedulePreview:
    """The next `count` fire times of `schedule` in `timezone` after `after`, up to 100
    years ahead: a schedule that fires more rarely than that has fewer."""
    errors = jobs.schedule_errors(schedule, timezone, rules)
    if errors:
        raise InvalidRequest(errors)
    start = _parse_after(after) if after is not None else datetime.now(UTC)
    parsed = schedules.parse(schedule)
    tz = schedules.parse_timezone(timezone)
    return SchedulePreview(times=schedules.preview(parsed, tz, start, count))


def _parse_after(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest.field("after", "is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise InvalidRequest.field("after", "needs a time zone offset or Z")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first UTC instant
        raise InvalidRequest.field("after", "is outside the years 1 to 9999 in UTC") from None
