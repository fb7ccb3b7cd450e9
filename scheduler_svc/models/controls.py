"""Operator controls on the wire (SPEC §8): bulk pause and resume, maintenance windows,
alerts as GET /alerts shows them, and the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from scheduler_svc.models.jobs import MAX_ID, JobStatus, Name, Tag


class PauseRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    """POST /jobs/{id}/pause: optionally a maintenance window's end (RFC 3339, future)."""

    until: datetime | None = None


class JobFilter(Struct, forbid_unknown_fields=True, kw_only=True):
    """Which jobs a bulk call acts on: all criteria hold (`all`: every job)."""

    ids: Annotated[list[Annotated[int, Meta(ge=1, le=MAX_ID)]], Meta(max_length=10000)] | None = (
        None
    )
    tag: Tag | Annotated[list[Tag], Meta(min_length=1, max_length=20)] | None = None
    name: Name | None = None
    status: JobStatus | None = None
    all: bool = False


class BulkRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    """POST /jobs/bulk/pause and /jobs/bulk/resume."""

    filter: JobFilter
    until: datetime | None = None  # pause only: the window's end
    dry_run: bool = False


class BulkResult(Struct):
    """How many jobs a bulk call matched, and how many of them changed status."""

    matched: int
    changed: int


# An alert's event (SPEC §8) and its delivery's status.
AlertKind = Literal["run.failed", "job.recovered", "job.missed"]
AlertStatus = Literal["pending", "delivered", "failed"]


class AlertOut(Struct, kw_only=True):
    """An alert as GET /alerts shows it (its url is not shown: it may carry a token).
    `next_attempt_at` is set only while it is pending."""

    id: int
    event: AlertKind
    job_id: int
    job_name: str
    run_id: int | None
    scheduled_for: datetime
    error: str | None  # why the alert was raised (the run's error, or why the tick is missed)
    status: AlertStatus
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None  # the last failed delivery's
    created_at: datetime
    delivered_at: datetime | None


# The audit trail (SPEC §8): what a row records.
AuditAction = Literal[
    "job.create",
    "job.update",
    "job.replace",
    "job.pause",
    "job.resume",
    "job.trigger",
    "job.delete",
    "run.cancel",
]


class AuditOut(Struct, frozen=True, kw_only=True):
    """An audit row as the store returns it and the API shows it (GET /audit)."""

    id: int
    at: datetime
    # The API key's prefix, the JWT's subject, `open`, or `system` (a window's end).
    actor: str
    action: AuditAction
    job_id: int | None
    run_id: int | None
    # {field: [old, new]}, secrets as "***".
    changes: dict[str, list[Any]]
    request_id: str | None
