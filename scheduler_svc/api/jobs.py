"""The rules of a job: validating what clients send, and when it next runs.

The API hands requests here; this module checks them against the schedule math, the
URL guard and the registered handlers, decides status and next_run_at by the database
clock, and writes through the store.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from msgspec import UNSET

from scheduler_svc import schedule, store
from scheduler_svc.errors import (
    FieldError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    VersionMismatch,
)
from scheduler_svc.models import (
    HandlerTarget,
    HttpTarget,
    JobCreate,
    JobPatch,
    JobRow,
    JobSpec,
    JobStatus,
    Target,
    target_from_json,
    target_to_json,
)
from scheduler_svc.redact import MASK
from scheduler_svc.store import Conn
from scheduler_svc.store.db import Pool
from scheduler_svc.targets.netguard import url_problem


@dataclass(frozen=True, slots=True)
class Rules:
    """The settings that decide what a valid job is."""

    min_interval_s: float = 1.0
    allow_private_webhooks: bool = False
    handler_names: frozenset[str] = frozenset()  # the registered handlers (every role loads them)


def schedule_errors(text: str, timezone: str, rules: Rules) -> list[FieldError]:
    """What is wrong with a schedule in a time zone, by field; empty when valid."""
    return list(_schedule_errors(text, timezone, rules.min_interval_s))


# The answer depends on nothing but its arguments (the minimum-interval check samples
# from a fixed instant), and checking a cron expression costs tens of milliseconds of
# croniter; clients create many jobs with the same few schedules.
@functools.lru_cache(maxsize=4096)
def _schedule_errors(text: str, timezone: str, min_interval_s: float) -> tuple[FieldError, ...]:
    errors = []
    try:
        tz = schedule.parse_timezone(timezone)
    except schedule.ScheduleError as exc:
        errors.append(FieldError("timezone", str(exc)))
        tz = None
    try:
        parsed = schedule.parse(text)
        if tz is not None:
            schedule.check_min_interval(parsed, tz, min_interval_s)
    except schedule.ScheduleError as exc:
        errors.append(FieldError("schedule", str(exc)))
    return tuple(errors)


def _check_target(target: Target, rules: Rules) -> list[FieldError]:
    """What is wrong with a target the client sent."""
    if isinstance(target, HttpTarget):
        problem = url_problem(target.url, allow_private=rules.allow_private_webhooks)
        if problem is not None:
            return [FieldError("target.url", problem)]
    if isinstance(target, HandlerTarget) and target.name not in rules.handler_names:
        names = ", ".join(sorted(rules.handler_names))
        registered = f"registered: {names}" if names else "none is registered"
        message = f"no handler is registered as {target.name!r} ({registered})"
        return [FieldError("target.name", message)]
    return []


def _schedule_text(schedule_field: str | None, interval_field: str | None) -> str:
    if (
        schedule_field is not None
        and interval_field is not None
        and schedule_field != interval_field
    ):
        raise InvalidRequest.field(
            "interval", "is an alias of schedule; send one of them, not both"
        )
    text = schedule_field if schedule_field is not None else interval_field
    if text is None:
        raise InvalidRequest.field("schedule", "is required (or its alias interval)")
    return text


def spec_from_create(body: JobCreate, rules: Rules) -> JobSpec:
    """Validate a create request into a JobSpec; raise InvalidRequest naming each bad field."""
    text = _schedule_text(body.schedule, body.interval)
    errors = schedule_errors(text, body.timezone, rules) + _check_target(body.target, rules)
    if errors:
        raise InvalidRequest(errors)
    return JobSpec(
        name=body.name,
        attributes=body.attributes,
        schedule=text.strip(),
        timezone=body.timezone,
        target=target_to_json(body.target),
        max_attempts=body.max_attempts,
        backoff_s=body.backoff_s,
        backoff_max_s=body.backoff_max_s,
        timeout_s=body.timeout_s,
        misfire_policy=body.misfire_policy,
        misfire_grace_s=body.misfire_grace_s,
        overlap=body.overlap,
        paused=body.paused,
    )


def _unmask(new: Target, old: dict[str, Any]) -> Target:
    """Keep stored secrets where a client sends back the mask it was shown."""
    if not isinstance(new, HttpTarget) or old.get("type") != "http":
        return new
    old_headers: dict[str, str] = old.get("headers") or {}
    headers = {
        name: old_headers.get(name, value) if value == MASK else value
        for name, value in new.headers.items()
    }
    return msgspec.structs.replace(new, headers=headers)


def spec_from_patch(row: JobRow, patch: JobPatch, rules: Rules) -> JobSpec:
    """Merge a PATCH into a stored job and validate the result."""

    def pick(value: Any, current: Any) -> Any:
        return current if value is UNSET else value

    schedule_field = None if patch.schedule is UNSET else patch.schedule
    interval_field = None if patch.interval is UNSET else patch.interval
    text = row.schedule
    if schedule_field is not None or interval_field is not None:
        text = _schedule_text(schedule_field, interval_field).strip()
    timezone = pick(patch.timezone, row.timezone)
    target = (
        target_from_json(row.target) if patch.target is UNSET else _unmask(patch.target, row.target)
    )
    # The stored target a PATCH leaves alone is not judged again: its handler may since
    # have gone, or its URL have been accepted by an older, looser guard, and the job
    # must still be pausable. The worker refuses to call either.
    sent = [] if patch.target is UNSET else _check_target(target, rules)
    errors = schedule_errors(text, timezone, rules) + sent
    if errors:
        raise InvalidRequest(errors)
    return JobSpec(
        name=pick(patch.name, row.name),
        attributes=pick(patch.attributes, row.attributes),
        schedule=text,
        timezone=timezone,
        target=target_to_json(target),
        max_attempts=pick(patch.max_attempts, row.max_attempts),
        backoff_s=pick(patch.backoff_s, row.backoff_s),
        backoff_max_s=pick(patch.backoff_max_s, row.backoff_max_s),
        timeout_s=pick(patch.timeout_s, row.timeout_s),
        misfire_policy=pick(patch.misfire_policy, row.misfire_policy),
        misfire_grace_s=pick(patch.misfire_grace_s, row.misfire_grace_s),
        overlap=pick(patch.overlap, row.overlap),
        paused=pick(patch.paused, row.status == "paused"),
    )


def schedule_state(spec: JobSpec, now: datetime) -> tuple[JobStatus, datetime | None]:
    """Status and next tick of a job starting from `now`: resuming never runs missed ticks."""
    if spec.paused:
        return "paused", None
    parsed = schedule.parse(spec.schedule)
    next_run_at = schedule.first_fire(parsed, schedule.parse_timezone(spec.timezone), now)
    return ("active", next_run_at) if next_run_at is not None else ("completed", None)


def request_hash(body: JobCreate) -> str:
    """A fingerprint of a create request, blind to JSON whitespace and key order (at
    every depth: `attributes` and a webhook body are dicts in the client's order)."""
    return hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()


async def create(
    pool: Conn, tenant: str, body: JobCreate, rules: Rules, idempotency_key: str | None
) -> tuple[JobRow, bool]:
    """Create a job; returns it and whether it is the replay of an earlier request."""
    spec = spec_from_create(body, rules)
    fingerprint = request_hash(body) if idempotency_key is not None else None
    status, next_run_at = schedule_state(spec, await store.db_now(pool))
    row = await store.job_insert(
        pool,
        tenant,
        spec,
        status=status,
        next_run_at=next_run_at,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
    )
    if row is not None:
        return row, False
    assert idempotency_key is not None
    earlier = await store.job_get_by_idempotency_key(pool, tenant, idempotency_key)
    if earlier is None:  # the first job was deleted in between: a new one is right
        return await create(pool, tenant, body, rules, idempotency_key)
    job, earlier_hash = earlier
    if earlier_hash != fingerprint:
        raise IdempotencyConflict()
    return job, True


def _reschedules(row: JobRow, spec: JobSpec) -> bool:
    return (
        spec.schedule != row.schedule
        or spec.timezone != row.timezone
        or spec.paused != (row.status == "paused")
    )


async def update(
    pool: Pool,
    tenant: str,
    job_id: int,
    patch: JobPatch,
    rules: Rules,
    if_match: int | None,
) -> JobRow:
    """Apply a PATCH in one transaction; a schedule, zone or pause change replans the job."""
    async with pool.acquire() as conn, conn.transaction():
        row = await store.job_lock(conn, tenant, job_id)
        if row is None:
            raise NotFound(f"job {job_id} does not exist")
        if if_match is not None and if_match != row.version:
            raise VersionMismatch(f"job {job_id} is at version {row.version}, not {if_match}")
        spec = spec_from_patch(row, patch, rules)
        status, next_run_at = row.status, row.next_run_at
        if _reschedules(row, spec):
            status, next_run_at = schedule_state(spec, await store.db_now(conn))
            if status == "paused":
                await store.runs_skip_pending(conn, job_id)
        updated = await store.job_update(
            conn, tenant, job_id, spec, status=status, next_run_at=next_run_at
        )
        assert updated is not None  # locked above
        return updated
