"""The console's changes: create and edit a job, run it now, pause, resume, delete,
bulk pause and resume after a count, cancel a run and run it again.

Each is a form post (urlencoded, with its CSRF token) answered by a redirect to the page
that shows the result (post/redirect/get), and each calls the same function the API's
route does, with the same rules and the same audit row: the console is another face of
the API, never a second way to change a job.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.params import PathParameter
from litestar.response import Redirect, Template

from scheduler_svc import store
from scheduler_svc.api import pausing, writes
from scheduler_svc.api.routes import AuditDep, JobId, PoolDep, RulesDep
from scheduler_svc.api.runs import RunId, cancel, count_cancelled
from scheduler_svc.console.access import CSRF_FIELD, CSRF_HEADER, csrf_matches
from scheduler_svc.console.forms import JobForm
from scheduler_svc.console.views import ViewerDep, not_found, page
from scheduler_svc.errors import FieldError, InvalidRequest
from scheduler_svc.models import BulkRequest, JobFilter

FILTERS = ("status", "tag", "name")


async def posted(request: Request[Any, Any, Any]) -> dict[str, str]:
    """A console form's fields (the first value of each), once its CSRF token matches
    this browser's cookie; else 403."""
    form = await request.form()
    fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
    token = fields.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not csrf_matches(request.scope, token):
        raise PermissionDeniedException(
            detail="the form's CSRF token does not match this browser's: reload the page"
        )
    return fields


def _see(url: str) -> Redirect:
    return Redirect(url, status_code=303)


@post("/jobs", name="console-job-create")
async def create_job(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    rules: RulesDep,
    audit: AuditDep,
) -> Redirect | Template:
    """Create a job from the form; its errors are shown beside their fields."""
    form = JobForm.posted(await posted(request))
    try:
        row, _ = await writes.create(pool, viewer.tenant, form.to_create(), rules, None, audit)
    except InvalidRequest as exc:
        shown = form.with_errors(exc)
        return _invalid(page(request, viewer, "job_form.html", "jobs", form=shown, job=None))
    return _see(f"/ui/jobs/{row.id}")


@get("/jobs/{job_id:int}/edit", name="console-job-edit")
async def edit_job_form(
    request: Request[Any, Any, Any], viewer: ViewerDep, pool: PoolDep, job_id: JobId
) -> Template:
    """The form that edits a job, filled with its settings."""
    job = await store.job_get(pool, viewer.tenant, job_id)
    if job is None:
        raise not_found(f"job {job_id}")
    return page(request, viewer, "job_form.html", "jobs", form=JobForm.of(job), job=job)


@post("/jobs/{job_id:int}", name="console-job-update")
async def update_job(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    rules: RulesDep,
    audit: AuditDep,
    job_id: JobId,
) -> Redirect | Template:
    """Change a job from the edit form, as PATCH /jobs/{id} would."""
    fields = await posted(request)
    job = await store.job_get(pool, viewer.tenant, job_id)
    if job is None:
        raise not_found(f"job {job_id}")
    form = JobForm.posted(fields)
    try:
        patch = form.to_patch(job)
        await writes.update(pool, viewer.tenant, job_id, patch, rules, None, audit)
    except InvalidRequest as exc:
        shown = form.with_errors(exc)
        return _invalid(page(request, viewer, "job_form.html", "jobs", form=shown, job=job))
    return _see(f"/ui/jobs/{job_id}")


def _invalid(template: Template) -> Template:
    template.status_code = 400
    return template


@post("/jobs/{job_id:int}/trigger", name="console-job-trigger")
async def trigger_job(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    audit: AuditDep,
    job_id: JobId,
) -> Redirect:
    """Run the job once now (POST /jobs/{id}/trigger)."""
    await posted(request)
    await writes.trigger(pool, viewer.tenant, job_id, audit)
    return _see(f"/ui/jobs/{job_id}")


@post("/jobs/{job_id:int}/pause", name="console-job-pause")
async def pause_job(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    rules: RulesDep,
    audit: AuditDep,
    job_id: JobId,
) -> Redirect:
    """Pause the job (POST /jobs/{id}/pause, without a window)."""
    await posted(request)
    await pausing.pause_one(pool, viewer.tenant, job_id, True, None, rules, audit)
    return _see(f"/ui/jobs/{job_id}")


@post("/jobs/{job_id:int}/resume", name="console-job-resume")
async def resume_job(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    rules: RulesDep,
    audit: AuditDep,
    job_id: JobId,
) -> Redirect:
    """Resume the job from now (POST /jobs/{id}/resume)."""
    await posted(request)
    await pausing.pause_one(pool, viewer.tenant, job_id, False, None, rules, audit)
    return _see(f"/ui/jobs/{job_id}")


@post("/jobs/{job_id:int}/delete", name="console-job-delete")
async def delete_job(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    audit: AuditDep,
    job_id: JobId,
) -> Redirect:
    """Delete the job and its runs (DELETE /jobs/{id})."""
    await posted(request)
    await writes.delete(pool, viewer.tenant, job_id, audit)
    return _see("/ui/jobs?" + urlencode({"done": "deleted 1 job"}))


@post("/jobs/bulk/{action:str}", name="console-jobs-bulk")
async def bulk(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    rules: RulesDep,
    audit: AuditDep,
    action: Annotated[str, PathParameter(pattern="^(pause|resume)$")],
) -> Redirect | Template:
    """Pause or resume every job the list's filters match. Without `confirm` it only
    counts them and asks; with it, it acts (POST /jobs/bulk/pause|resume)."""
    fields = await posted(request)
    filters = {k: fields[k] for k in FILTERS if fields.get(k)}
    try:
        wanted = msgspec.convert({**filters, "all": not filters}, JobFilter)
    except msgspec.ValidationError as exc:
        raise InvalidRequest([FieldError.from_msgspec(str(exc))]) from None
    paused = action == "pause"
    confirmed = fields.get("confirm")
    result = await pausing.bulk(
        pool,
        viewer.tenant,
        BulkRequest(filter=wanted, dry_run=confirmed is None),
        paused,
        rules,
        audit,
    )
    if confirmed is None:
        return page(
            request,
            viewer,
            "bulk_confirm.html",
            "jobs",
            action=action,
            matched=result.matched,
            filters=filters,
        )
    verb = "paused" if paused else "resumed"
    done = f"{verb} {result.changed} of {result.matched} matching jobs"
    return _see("/ui/jobs?" + urlencode({**filters, "done": done}))


@post("/runs/{run_id:int}/cancel", name="console-run-cancel")
async def cancel_run(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    audit: AuditDep,
    run_id: RunId,
) -> Redirect:
    """Cancel the run (POST /runs/{id}/cancel)."""
    await posted(request)
    count_cancelled(request, await cancel(pool, viewer.tenant, run_id, audit))
    return _see(f"/ui/runs/{run_id}")


@post("/runs/{run_id:int}/again", name="console-run-again")
async def run_again(
    request: Request[Any, Any, Any],
    viewer: ViewerDep,
    pool: PoolDep,
    audit: AuditDep,
    run_id: RunId,
) -> Redirect:
    """Run the run's job once more, now (a manual trigger); shows the new run."""
    await posted(request)
    run = await store.run_get(pool, viewer.tenant, run_id)
    if run is None:
        raise not_found(f"run {run_id}")
    again = await writes.trigger(pool, viewer.tenant, run.job_id, audit)
    return _see(f"/ui/runs/{again.id}")
