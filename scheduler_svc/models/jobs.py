"""Jobs on the wire: the fields clients send, the row the store returns, the view the API
shows, targets, and API keys' rows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

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
# Ids of jobs and runs are PostgreSQL bigints: 1 to MAX_ID.
MAX_ID = 2**63 - 1
# A job's key (unique per tenant). api/jobs.key_problem refuses more: an empty, "." or
# ".." segment between slashes, which a URL path (PUT /jobs/by-key/{key}) cannot carry.
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$"
JobKey = Annotated[str, Meta(pattern=KEY_PATTERN, description="Unique per tenant.")]
ManagedBy = Annotated[str, Meta(min_length=1, max_length=200, description="The owning tool.")]
Tag = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,62}$")]
Tags = Annotated[list[Tag], Meta(max_length=20, description="Labels to find jobs by.")]
JitterSeconds = Annotated[
    float, Meta(ge=0, le=3600, description="Each tick's run is due up to this much later.")
]
AlertEvent = Literal["failed", "recovered", "missed"]
ALERT_EVENTS: tuple[AlertEvent, ...] = ("failed", "recovered", "missed")


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


class AlertSettings(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Where and on what a job is alerted (SPEC §8); without `url`, at SCHEDULER_ALERT_URL."""

    url: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None
    on: Annotated[list[AlertEvent], Meta(max_length=3)] = msgspec.field(
        default_factory=lambda: list(ALERT_EVENTS)
    )
    # Default: 60 s more than the job's timeout_s.
    missed_after_s: Annotated[float, Meta(ge=1, le=7 * 86400)] | None = None


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
    tags: Tags = []
    jitter_s: JitterSeconds = 0.0
    alerts: AlertSettings | None = None


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
    tags: Tags | UnsetType = UNSET
    jitter_s: JitterSeconds | UnsetType = UNSET
    alerts: AlertSettings | UnsetType | None = UNSET
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
    tags: list[str] = []
    jitter_s: float = 0.0
    paused_until: datetime | None = None
    alerts: dict[str, Any] | None = None


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
    tags: list[str]
    jitter_s: float
    alerts: AlertSettings | None
    status: JobStatus
    paused_until: datetime | None
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
    tags: list[str] = []
    jitter_s: float = 0.0
    alerts: dict[str, Any] | None = None  # AlertSettings as stored
    paused_until: datetime | None = None  # the end of a maintenance window


class ApiKeyRow(Struct, frozen=True, kw_only=True):
    """A row of `api_keys`: the key's visible prefix and hash, never the key itself."""

    prefix: str
    key_hash: bytes
    tenant: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
