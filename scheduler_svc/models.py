"""Wire types: one msgspec Struct per direction, plus the frozen row the store returns."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from scheduler_svc.schedule.overlap import Unfinished

MisfirePolicy = Literal["run_once", "skip", "run_all"]
Overlap = Literal["forbid", "allow"]
JobStatus = Literal["active", "paused", "completed"]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

Name = Annotated[str, Meta(min_length=1, max_length=200)]
ScheduleText = Annotated[str, Meta(min_length=1, max_length=200)]
TimezoneName = Annotated[str, Meta(min_length=1, max_length=64)]
Attributes = dict[str, Any]
MaxAttempts = Annotated[int, Meta(ge=1, le=100)]
BackoffSeconds = Annotated[float, Meta(ge=0, le=7 * 86400)]
TimeoutSeconds = Annotated[int, Meta(ge=1, le=86400)]
GraceSeconds = Annotated[int, Meta(ge=0, le=7 * 86400)]
HeaderName = Annotated[
    str, Meta(min_length=1, max_length=256, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
]
HeaderValue = Annotated[str, Meta(max_length=8192, pattern=r"^[^\r\n\x00]*$")]
HandlerName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z_][\w.:-]*$")]
# A job's key (unique per tenant). api/jobs.key_problem refuses more: an empty, "." or
# ".." segment between slashes, which a URL path (PUT /jobs/by-key/{key}) cannot carry.
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$"
JobKey = Annotated[str, Meta(pattern=KEY_PATTERN, description="Unique per tenant.")]
ManagedBy = Annotated[str, Meta(min_length=1, max_length=200, description="The owning tool.")]


class LogTarget(Struct, tag_field="type", tag="log", forbid_unknown_fields=True):
    """Write one structured log line with the job and its attributes."""


class HttpTarget(Struct, tag_field="type", tag="http", forbid_unknown_fields=True, kw_only=True):
    """Call a webhook; `body` defaults to the run envelope."""

    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    method: HttpMethod = "POST"
    headers: dict[HeaderName, HeaderValue] = {}
    body: Any = None


class HandlerTarget(Struct, tag_field="type", tag="handler", forbid_unknown_fields=True):
    """Call a Python handler registered under the `scheduler_svc.handlers` entry points."""

    name: HandlerName


Target = LogTarget | HttpTarget | HandlerTarget


class JobFields(Struct, forbid_unknown_fields=True, kw_only=True):
    """A job's fields as clients send them. `interval` is the old service's name for
    `schedule`."""

    name: Name
    key: JobKey | None = None
    managed_by: ManagedBy | None = None
    schedule: ScheduleText | None = None
    interval: ScheduleText | None = None
    attributes: Attributes = {}
    timezone: TimezoneName = "UTC"
    target: Target = msgspec.field(default_factory=LogTarget)
    max_attempts: MaxAttempts = 3
    backoff_s: BackoffSeconds = 10.0
    backoff_max_s: BackoffSeconds = 3600.0
    timeout_s: TimeoutSeconds = 30
    misfire_policy: MisfirePolicy = "run_once"
    misfire_grace_s: GraceSeconds = 60
    overlap: Overlap = "forbid"


class JobCreate(JobFields, forbid_unknown_fields=True, kw_only=True):
    """POST /jobs."""

    paused: bool = False


class JobPut(JobFields, forbid_unknown_fields=True, kw_only=True):
    """PUT /jobs/by-key/{key}: the whole job; without `paused` it keeps its status."""

    paused: bool | UnsetType = UNSET


class JobPlan(Struct):
    """PUT /jobs/by-key/{key}?dry_run=true: what the PUT would do, and to which fields."""

    action: Literal["create", "update", "none"]
    changed: list[str]


class JobPatch(Struct, forbid_unknown_fields=True, kw_only=True):
    """PATCH /jobs/{id}: only the fields present change."""

    name: Name | UnsetType = UNSET
    key: JobKey | UnsetType | None = UNSET
    managed_by: ManagedBy | UnsetType | None = UNSET
    schedule: ScheduleText | UnsetType = UNSET
    interval: ScheduleText | UnsetType = UNSET
    attributes: Attributes | UnsetType = UNSET
    timezone: TimezoneName | UnsetType = UNSET
    target: Target | UnsetType = UNSET
    max_attempts: MaxAttempts | UnsetType = UNSET
    backoff_s: BackoffSeconds | UnsetType = UNSET
    backoff_max_s: BackoffSeconds | UnsetType = UNSET
    timeout_s: TimeoutSeconds | UnsetType = UNSET
    misfire_policy: MisfirePolicy | UnsetType = UNSET
    misfire_grace_s: GraceSeconds | UnsetType = UNSET
    overlap: Overlap | UnsetType = UNSET
    paused: bool | UnsetType = UNSET


class JobRow(Struct, frozen=True, kw_only=True):
    """A row of `jobs` as the store returns it."""

    id: int
    tenant: str
    name: str
    attributes: dict[str, Any]
    schedule: str
    timezone: str
    target: dict[str, Any]
    max_attempts: int
    backoff_s: float
    backoff_max_s: float
    timeout_s: int
    misfire_policy: MisfirePolicy
    misfire_grace_s: int
    overlap: Overlap
    status: JobStatus
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_run_status: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    key: str | None = None
    managed_by: str | None = None


class JobOut(Struct, kw_only=True):
    """A job as the API shows it. `interval`, `lastRunTimestamp` and `nextRunTimestamp`
    repeat `schedule`, `last_run_at` and `next_run_at` under the old service's names."""

    id: int
    key: str | None
    name: str
    managed_by: str | None
    attributes: dict[str, Any]
    schedule: str
    timezone: str
    target: Target
    max_attempts: int
    backoff_s: float
    backoff_max_s: float
    timeout_s: int
    misfire_policy: MisfirePolicy
    misfire_grace_s: int
    overlap: Overlap
    status: JobStatus
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_run_status: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    interval: str
    lastRunTimestamp: datetime | None
    nextRunTimestamp: datetime | None


class SchedulePreview(Struct):
    """GET /schedules/preview."""

    times: list[datetime]


class Status(Struct):
    """Health answers."""

    status: str
    schema_version: int | None = None
    # /readyz with a read replica configured (absent without one): "ok", "lagging" (more
    # than SCHEDULER_READ_MAX_LAG_S behind) or "down"; its lag in seconds, null when down.
    read_replica: Literal["ok", "lagging", "down"] | UnsetType = UNSET
    read_replica_lag_s: float | UnsetType | None = UNSET


# Target's variants by tag. Converting to one Struct is several times faster than to
# the union, whose type information msgspec works out again on every call; the API
# converts a target for every job it shows.
_TARGETS_BY_TYPE: dict[str, type[Target]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (LogTarget, HttpTarget, HandlerTarget)
}


def target_from_json(data: dict[str, Any]) -> Target:
    """Decode a stored target."""
    kind = data.get("type") if isinstance(data, dict) else None
    variant = _TARGETS_BY_TYPE.get(kind) if isinstance(kind, str) else None
    target: Target = msgspec.convert(data, variant or Target)
    return target


def target_to_json(target: Target) -> dict[str, Any]:
    """Encode a target for storage, secrets included."""
    return msgspec.to_builtins(target)  # type: ignore[no-any-return]


class JobSpec(Struct, frozen=True, kw_only=True):
    """Every writable field of a job, validated: what the store writes."""

    name: str
    attributes: dict[str, Any]
    schedule: str
    timezone: str
    target: dict[str, Any]
    max_attempts: int
    backoff_s: float
    backoff_max_s: float
    timeout_s: int
    misfire_policy: MisfirePolicy
    misfire_grace_s: int
    overlap: Overlap
    paused: bool
    key: str | None = None
    managed_by: str | None = None


RunStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled"]
RunTrigger = Literal["schedule", "manual"]


class RunRow(Struct, frozen=True, kw_only=True):
    """A row of `job_runs` as the store returns it."""

    id: int
    job_id: int
    tenant: str
    scheduled_for: datetime
    trigger: RunTrigger
    status: RunStatus
    attempt: int
    next_attempt_at: datetime | None  # None while it waits for an earlier run of its job
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    error: str | None
    output: Any
    worker: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    due_at: datetime | None = None  # None: the tick (no jitter, or a run from before it)


class RunOut(Struct, kw_only=True):
    """A run as the API shows it. `next_attempt_at` is set only while the run waits."""

    id: int
    job_id: int
    scheduled_for: datetime
    # When the run was due: the tick plus its job's jitter (the tick without jitter).
    due_at: datetime
    trigger: RunTrigger
    status: RunStatus
    attempt: int
    next_attempt_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    error: str | None
    output: Any
    worker: str | None


class Execution(Struct, frozen=True, kw_only=True):
    """What carrying out a job's tick takes from the job: its target and how to retry it."""

    name: str
    attributes: dict[str, Any]
    target: dict[str, Any]
    timeout_s: int
    max_attempts: int
    backoff_s: float
    backoff_max_s: float


class DueJob(Execution, frozen=True, kw_only=True):
    """A job the scheduler claimed for this pass."""

    id: int
    tenant: str
    schedule: str
    timezone: str
    next_run_at: datetime
    misfire_policy: MisfirePolicy
    misfire_grace_s: int
    overlap: Overlap
    # What its unfinished runs say about its ticks; None when it has none (or overlap
    # is allowed), as for most jobs.
    unfinished: Unfinished | None = None
    now: datetime


class InsertedRun(Struct, frozen=True):
    """A run a scheduler pass inserted other than pending: succeeded (a log target the
    pass ran itself), skipped (overlap), or running (leased to this replica's
    executor). `started_at` is set for the first and the last."""

    id: int
    job_id: int
    scheduled_for: datetime
    status: Literal["succeeded", "skipped", "running"]
    started_at: datetime | None


class ClaimedRun(Execution, frozen=True, kw_only=True):
    """A run leased to this worker, with what executing it needs from its job."""

    id: int
    job_id: int
    tenant: str
    scheduled_for: datetime
    trigger: RunTrigger
    attempt: int
    started_at: datetime
    lost_worker: str | None  # set when this attempt takes over an expired lease
    due_at: datetime | None = None  # when it was due, if not at its tick (jitter)


class RunResult(Struct, frozen=True, kw_only=True):
    """What an attempt came to, as runs_exchange records it."""

    run_id: int
    status: Literal["succeeded", "failed", "pending"]
    delay_s: float | None  # for "pending": seconds until the next attempt
    error: str | None
    output: Any
    duration_ms: float
    # time.monotonic() when the attempt ended, which is when its result is made: the
    # run's finished_at is derived from it however late the result reaches the database.
    ended_at: float = msgspec.field(default_factory=time.monotonic)


class ApiKeyRow(Struct, frozen=True, kw_only=True):
    """A row of `api_keys`: the key's visible prefix and hash, never the key itself."""

    prefix: str
    key_hash: bytes
    tenant: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
