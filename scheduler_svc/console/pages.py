"""The console's pages: overview, jobs, job and run. Each GET answers the whole page, or,
asked by htmx (`HX-Request`), only its live fragment, which console.js asks for again
when the live stream says the page's jobs changed.

Every read is the tenant's own, bounded, and keyset-paged: no page counts the runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get
from litestar.params import QueryParameter
from litestar.response import Template

from scheduler_svc import schedule as schedules
from scheduler_svc import store
from scheduler_svc.api.paging import decode_cursor, encode_cursor
from scheduler_svc.api.reads import ReadsDep
from scheduler_svc.api.routes import JobId, PoolDep
from scheduler_svc.api.runs import RunId
from scheduler_svc.console.forms import JobForm
from scheduler_svc.console.views import (
    ViewerDep,
    is_htmx,
    lag_points,
    minute_counts,
    not_found,
    page,
    shared_fragment,
)
from scheduler_svc.errors import InvalidRequest
from scheduler_svc.models import JobRow, JobStatus, Tag

# Lines per page of the jobs list and of a job's runs.
JOBS_PAGE = 50
RUNS_PAGE = 25
# Runs in each job's strip of recent outcomes.
STRIP_RUNS = 12
# Failed runs the overview groups at most: a storm of failures costs a bounded read.
FAILURES_SCANNED = 2000
# The backlog is counted up to this, then shown as "more than".
BACKLOG_CAP = 10_000
NEXT_FIRES = 10
RUNNING_SHOWN = 20

OptionalText = Annotated[str | None, QueryParameter(max_length=200)]
Cursor = Annotated[str | None, QueryParameter(max_length=64)]


@get("/", name="console-overview")
async def overview(
    request: Request[Any, Any, Any], viewer: ViewerDep, pool: PoolDep
) -> Template | Response[str]:
    """Runs per minute by outcome and fire lag over the last hour (from run_minutes), the
    due backlog, runs under way, next fires, failures by error, and for admins the
    replicas connected now."""

    async def load() -> dict[str, Any]:
        now = datetime.now(UTC)
        hour_ago = now - timedelta(hours=1)
        minutes = await store.run_minutes_read(pool, viewer.tenant, hour_ago)
        admin = viewer.is_admin
        return {
            "minutes": minute_counts(minutes, hour_ago, now),
            "lags": lag_points(minutes),
            "totals": _totals(minutes),
            "backlog": await store.console_backlog(pool, viewer.tenant, BACKLOG_CAP),
            "backlog_all": await store.console_backlog(pool, None, BACKLOG_CAP) if admin else None,
            "backlog_cap": BACKLOG_CAP,
            "running": await store.console_running(pool, viewer.tenant, RUNNING_SHOWN),
            "next_fires": await store.console_next_fires(pool, viewer.tenant, NEXT_FIRES),
            "failures": await store.console_failures(
                pool, viewer.tenant, hour_ago, FAILURES_SCANNED
            ),
            "replicas": await store.console_replicas(pool) if admin else None,
            "now": now,
        }

    if is_htmx(request):  # what every open overview asks after each batch: shared
        admin = "admin" if viewer.is_admin else ""
        return await shared_fragment(request, viewer, "overview_live.html", load, admin)
    return page(request, viewer, "overview.html", "overview", **await load())


def _totals(minutes: list[Any]) -> dict[str, int]:
    totals = {"succeeded": 0, "failed": 0, "skipped": 0, "cancelled": 0, "retried": 0}
    for minute in minutes:
        for outcome in totals:
            totals[outcome] += getattr(minute, outcome)
    return totals


@get("/jobs", name="console-jobs")
async def jobs_list(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    status: OptionalText = None,
    tag: OptionalText = None,
    name: OptionalText = None,
    cursor: Cursor = None,
    done: OptionalText = None,
) -> Template | Response[str]:
    """The tenant's jobs, newest first, filtered by status, tag and name (as GET /jobs).
    The filter form sends empty fields: they filter nothing."""
    status, tag = _filter("status", status, JobStatus), _filter("tag", tag, Tag)
    before_id = decode_cursor(cursor) if cursor else None
    filters = {"status": status or "", "tag": tag or "", "name": name or ""}

    async def load() -> dict[str, Any]:
        lines = await store.console_jobs_page(
            pool,
            viewer.tenant,
            before_id=before_id,
            status=status,
            name=name or None,
            tags=[tag] if tag else [],
            limit=JOBS_PAGE + 1,
        )
        shown = lines[:JOBS_PAGE]
        ids = [j.id for j in shown]
        return {
            "jobs": shown,
            "strips": await store.console_recent_runs(pool, viewer.tenant, ids, STRIP_RUNS),
            "filters": filters,
            "filtered": any(filters.values()),
            "next_cursor": encode_cursor(shown[-1].id) if len(lines) > JOBS_PAGE else None,
            "first_page": before_id is None,
        }

    if is_htmx(request):  # the rows every open jobs page asks for again: shared
        return await shared_fragment(request, viewer, "jobs_rows.html", load)
    return page(request, viewer, "jobs.html", "jobs", done=done, **await load())


def _filter(field: str, value: str | None, kind: Any) -> Any:
    """A filter's value checked as the API checks it, or None when left empty."""
    if not value:
        return None
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest.field(field, str(exc)) from None


@get("/jobs/new", name="console-job-new")
async def job_new(request: Request[Any, Any, Any], viewer: ViewerDep) -> Template:
    """The form that creates a job."""
    return page(request, viewer, "job_form.html", "jobs", form=JobForm.empty(), job=None)


@get("/jobs/{job_id:int}", name="console-job")
async def job_page(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    reads: ReadsDep,
    job_id: JobId,
    runs_cursor: Cursor = None,
) -> Template | Response[str]:
    """A job: settings, next fire times in its zone and in UTC, its runs by cursor, the
    edit form, its controls and its audit trail."""
    before_id = decode_cursor(runs_cursor) if runs_cursor else None

    async def load() -> dict[str, Any]:
        job = await store.job_get(pool, viewer.tenant, job_id)
        if job is None:
            raise not_found(f"job {job_id}")
        runs = await reads.run(
            store.runs_list, viewer.tenant, job_id, before_id=before_id, limit=RUNS_PAGE + 1
        )
        more = len(runs) > RUNS_PAGE
        return {
            "job": job,
            "runs": runs[:RUNS_PAGE],
            "runs_next": encode_cursor(runs[RUNS_PAGE - 1].id) if more else None,
            "runs_first_page": before_id is None,
        }

    if is_htmx(request):  # the runs every open page of this job asks for again: shared
        return await shared_fragment(request, viewer, "job_live.html", load)
    context = await load()
    job = context["job"]
    context["fires"] = next_fires(job)
    context["audit"] = await store.audit_list_job(
        pool, viewer.tenant, job_id, before_id=None, limit=20
    )
    context["form"] = JobForm.of(job)
    return page(request, viewer, "job.html", "jobs", **context)


def next_fires(job: JobRow, count: int = 8) -> list[datetime]:
    """The job's next fire times (DST-correct: the schedule package walks its zone)."""
    if job.status != "active" or job.next_run_at is None:
        return []
    try:
        parsed = schedules.parse(job.schedule)
        zone = schedules.parse_timezone(job.timezone)
    except schedules.ScheduleError:
        return []
    later = schedules.preview(parsed, zone, job.next_run_at, count - 1)
    return [job.next_run_at, *later]


@get("/runs/{run_id:int}", name="console-run")
async def run_page(
    request: Request[Any, Any, Any], viewer: ViewerDep, pool: PoolDep, run_id: RunId
) -> Template:
    """A run: its timeline, output, error and worker; cancel and run again."""
    run = await store.run_get(pool, viewer.tenant, run_id)
    if run is None:
        raise not_found(f"run {run_id}")
    job = await store.job_get(pool, viewer.tenant, run.job_id)
    template = "run_live.html" if is_htmx(request) else "run.html"
    return page(request, viewer, template, "jobs", run=run, job=job)
