"""Jobs as code: the routes of /jobs/by-key/{key}. GET, PATCH and DELETE work as their id
forms; PUT creates or replaces the job with that key, and, as a dry run, says what it
would do.

A PUT sends the whole job. One that changes nothing writes nothing (the version stays);
one without `paused` keeps the job's status, and a secret sent back masked keeps the
stored value. What changed is judged on the job as stored, after those rules, so a plan
sees a changed secret it cannot read (by field name, never by value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter

from scheduler_svc import audit, store
from scheduler_svc.api import jobs, writes
from scheduler_svc.api.openapi import problem_responses
from scheduler_svc.api.routes import (
    AuditDep,
    IfMatch,
    PoolDep,
    RulesDep,
    TenantDep,
    job_response,
    parse_if_match,
    strict_body,
)
from scheduler_svc.api.views import etag, job_out
from scheduler_svc.errors import InvalidRequest, VersionMismatch
from scheduler_svc.models import KEY_PATTERN, JobOut, JobPatch, JobPlan, JobPut, JobRow, JobSpec
from scheduler_svc.store import Connection
from scheduler_svc.store.db import Pool

# What a PUT by key compares, in the order a plan lists changes (and `paused` last).
COMPARED = (
    "name",
    "managed_by",
    "schedule",
    "timezone",
    "attributes",
    "target",
    "max_attempts",
    "backoff_s",
    "backoff_max_s",
    "timeout_s",
    "misfire_policy",
    "misfire_grace_s",
    "overlap",
    "tags",
    "jitter_s",
    "alerts",
)
Action = Literal["create", "update", "none"]


@dataclass(frozen=True, slots=True)
class Put:
    """What a PUT by key did, or would do: its action, the fields it changes (every
    field, to create), and the job as it is now (None for a dry run)."""

    action: Action
    changed: list[str]
    row: JobRow | None


def changed_fields(row: JobRow, spec: JobSpec) -> list[str]:
    """The fields `spec` would change in the stored `row`, by name (secrets included,
    never their values)."""
    stored = {name: getattr(row, name) for name in COMPARED} | {"target": jobs.stored_target(row)}
    changed = [name for name in COMPARED if getattr(spec, name) != stored[name]]
    return [*changed, "paused"] if spec.paused != (row.status == "paused") else changed


async def create_or_replace(
    pool: Pool,
    tenant: str,
    key: str,
    body: JobPut,
    rules: jobs.Rules,
    if_match: int | None,
    ctx: audit.AuditContext,
    *,
    must_exist: bool,
    dry_run: bool,
) -> Put:
    """Create or replace the job of `tenant` with `key` (or, for a dry run, say what that
    would do); a PUT that changes nothing writes nothing. `must_exist`: an If-Match was
    sent, which a job that does not exist fails (RFC 9110)."""
    if body.key is not None and body.key != key:
        raise InvalidRequest.field("key", f"is {key!r} in the path: leave it out or send that")
    body = msgspec.structs.replace(body, key=key)

    async def work(conn: Connection) -> Put:
        while True:
            row = await store.job_lock_by_key(conn, tenant, key)
            if row is not None:
                break
            if must_exist:
                raise VersionMismatch(f"no job has the key {key!r}, which If-Match requires")
            spec = jobs.spec_from_create(body, rules)
            if dry_run:
                return Put("create", [*COMPARED, "paused"], None)
            created = await writes.insert(conn, tenant, spec, ctx)
            if created is not None:
                return Put("create", [*COMPARED, "paused"], created)
            # A concurrent PUT created it first (the insert waited for it): replace that.
        if if_match is not None and if_match != row.version:
            raise VersionMismatch(f"job {key!r} is at version {row.version}, not {if_match}")
        spec = jobs.spec_from_create(body, rules, row)
        changed = changed_fields(row, spec)
        if dry_run or not changed:
            return Put("update" if changed else "none", changed, None if dry_run else row)
        replaced = await writes.write(conn, tenant, row, spec)
        await writes.audit_changed(conn, tenant, "job.replace", row, replaced, ctx)
        return Put("update", changed, replaced)

    return await writes.transaction(pool, work)


# Litestar hands a `path` parameter over with the slash before it (jobs.path_key drops
# it and checks the rest); the documented schema is the key's.
KeyPath = Annotated[
    str,
    PathParameter(
        description="The job's key; `/` and `:` need no escaping.",
        schema_extra={"pattern": KEY_PATTERN, "minLength": 1, "maxLength": 200},
    ),
]


def _answer(row: JobRow, status_code: int = 200, **headers: str) -> Response[JobOut | JobPlan]:
    """job_response, typed as PUT's answer (a job, or a dry run's plan)."""
    return Response(job_out(row), status_code=status_code, headers={"ETag": etag(row), **headers})


class JobsByKeyController(Controller):
    """Jobs named by their key: get, create or replace, change, delete."""

    path = "/jobs/by-key"
    tags = ["jobs"]  # noqa: RUF012 - Litestar reads it as a class attribute

    @get("/{key:path}", operation_id="getJobByKey", summary="Get the job with a key")
    async def get_job(self, key: KeyPath, pool: PoolDep, tenant: TenantDep) -> Response[JobOut]:
        job = jobs.path_key(key)
        row = await store.job_get_by_key(pool, tenant, job)
        if row is None:
            raise writes.not_found(job)
        return job_response(row)

    @put(
        "/{key:path}",
        operation_id="putJobByKey",
        summary="Create or replace the job with a key",
        description=(
            "The whole job, as for POST /jobs (`key` may be left out). Creates it (201) or"
            " replaces it (200); a PUT that changes nothing keeps its version. Without"
            " `paused` the job keeps its status; a secret sent back as `***` keeps its"
            " value. With `dry_run=true` nothing is written, and the answer is a JobPlan."
        ),
        responses={
            201: ResponseSpec(JobOut, description="Created", generate_examples=False),
            **problem_responses(412),
        },
    )
    async def put_job(
        self,
        key: KeyPath,
        data: JSONBody[JobPut],
        request: Request[Any, Any, Any],
        pool: PoolDep,
        tenant: TenantDep,
        rules: RulesDep,
        audit: AuditDep,
        if_match: IfMatch = None,
        dry_run: Annotated[
            bool, QueryParameter(description="Write nothing; answer what the PUT would do.")
        ] = False,
    ) -> Response[JobOut | JobPlan]:
        data = await strict_body(request, JobPut)
        version = parse_if_match(if_match)
        done = await create_or_replace(
            pool,
            tenant,
            jobs.path_key(key),
            data,
            rules,
            version,
            audit,
            must_exist=if_match is not None,
            dry_run=dry_run,
        )
        if done.row is None:
            return Response(JobPlan(action=done.action, changed=done.changed))
        if done.action == "create":
            return _answer(done.row, 201, Location=f"/jobs/{done.row.id}")
        return _answer(done.row)

    @patch(
        "/{key:path}",
        operation_id="updateJobByKey",
        summary="Change the fields of the job with a key",
        responses=problem_responses(409, 412),
    )
    async def update_job(
        self,
        key: KeyPath,
        data: JSONBody[JobPatch],
        request: Request[Any, Any, Any],
        pool: PoolDep,
        tenant: TenantDep,
        rules: RulesDep,
        audit: AuditDep,
        if_match: IfMatch = None,
    ) -> Response[JobOut]:
        data = await strict_body(request, JobPatch)
        job = jobs.path_key(key)
        version = parse_if_match(if_match)
        row = await writes.update(pool, tenant, job, data, rules, version, audit)
        return job_response(row)

    @delete("/{key:path}", operation_id="deleteJobByKey", summary="Delete the job with a key")
    async def delete_job(
        self, key: KeyPath, pool: PoolDep, tenant: TenantDep, audit: AuditDep
    ) -> None:
        await writes.delete(pool, tenant, jobs.path_key(key), audit)
