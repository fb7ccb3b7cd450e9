"""How the API shows what the store returns: jobs with their secrets masked, and runs."""

from __future__ import annotations

import msgspec

from scheduler_svc.models import (
    AlertSettings,
    HttpTarget,
    JobOut,
    JobRow,
    RunOut,
    RunRow,
    Target,
    target_from_json,
)
from scheduler_svc.redact import MASK, SENSITIVE_HEADERS


def masked(target: Target) -> Target:
    """The target with credential-like header values replaced by MASK."""
    if not isinstance(target, HttpTarget) or not target.headers:
        return target
    headers = {
        name: MASK if name.lower() in SENSITIVE_HEADERS else value
        for name, value in target.headers.items()
    }
    return msgspec.structs.replace(target, headers=headers)


def job_out(row: JobRow) -> JobOut:
    """The API view of a stored job, secrets masked."""
    return JobOut(
        id=row.id,
        key=row.key,
        name=row.name,
        managed_by=row.managed_by,
        attributes=row.attributes,
        schedule=row.schedule,
        timezone=row.timezone,
        target=masked(target_from_json(row.target)),
        max_attempts=row.max_attempts,
        backoff_s=row.backoff_s,
        backoff_max_s=row.backoff_max_s,
        timeout_s=row.timeout_s,
        misfire_policy=row.misfire_policy,
        misfire_grace_s=row.misfire_grace_s,
        overlap=row.overlap,
        tags=row.tags,
        jitter_s=row.jitter_s,
        alerts=None if row.alerts is None else msgspec.convert(row.alerts, AlertSettings),
        status=row.status,
        paused_until=row.paused_until,
        next_run_at=row.next_run_at,
        last_run_at=row.last_run_at,
        last_run_status=row.last_run_status,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
        interval=row.schedule,
        lastRunTimestamp=row.last_run_at,
        nextRunTimestamp=row.next_run_at,
    )


def run_out(row: RunRow) -> RunOut:
    """The API view of a stored run."""
    return RunOut(
        id=row.id,
        job_id=row.job_id,
        scheduled_for=row.scheduled_for,
        due_at=row.due_at or row.scheduled_for,
        trigger=row.trigger,
        status=row.status,
        attempt=row.attempt,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_ms=row.duration_ms,
        error=row.error,
        output=row.output,
        worker=row.worker,
    )


def etag(row: JobRow) -> str:
    """The strong ETag of a job's version."""
    return f'"{row.version}"'
