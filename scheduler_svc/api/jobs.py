"""The rules of a job: validating what clients send, and when it next runs.

The API hands requests here; this module checks them against the schedule math, the
URL guard and the registered handlers, decides status and next_run_at by the database
clock, and writes through the store. Jobs are named by id or by key (a PUT by
key, which creates or replaces, is `by_key`'s).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import msgspec
from msgspec import UNSET

from scheduler_svc import schedule, store
from scheduler_svc.errors import (
    FieldError,
    IdempotencyConflict,
    InvalidRequest,
    KeyConflict,
    NotFound,
    VersionMismatch,
)
from scheduler_svc.models import (
    KEY_PATTERN,
    HandlerTarget,
    HttpTarget,
    JobCreate,
    JobPatch,
    JobPut,
    JobRow,
    JobSpec,
    JobStatus,
    Target,
    target_from_json,
    target_to_json,
)
from scheduler_svc.redact import MASK
from scheduler_svc.store import Conn, Connection
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


_KEY = re.compile(KEY_PATTERN.removesuffix("$"))
# A segment a URL path cannot carry as it is: clients and servers drop "." and ".."
# segments and merge or strip slashes, so /jobs/by-key/a/ would name the job "a".
_UNADDRESSABLE = re.compile(r"(?:^|/)\.{0,2}(?:/|$)")


def key_problem(key: str) -> str | None:
    """What is wrong with a job key; None when it is a valid one."""
    if _KEY.fullmatch(key) is None:
        return "must be 1-200 letters, digits and _ . : / -, starting with a letter or digit"
    if _UNADDRESSABLE.search(key) is not None:
        return 'must not end with "/" or have an empty, "." or ".." segment between slashes'
    return None


def path_key(value: str) -> str:
    """The job key of a `/jobs/by-key/{key}` path (Litestar keeps the slash before it)."""
    key = value.removeprefix("/")
    problem = key_problem(key)
    if problem is not None:
        raise InvalidRequest.field("key", problem)
    return key


def _key_errors(key: str | None) -> list[FieldError]:
    problem = None if key is None else key_problem(key)
    return [] if problem is None else [FieldError("key", problem)]


def spec_from_create(body: JobCreate | JobPut, rules: Rules, row: JobRow | None = None) -> JobSpec:
    """Validate a create request into a JobSpec; raise InvalidRequest naming each bad field.

    A PUT replacing `row` keeps, as a PATCH does, a stored secret sent back masked, and
    does not judge again a target sent as stored; without `paused` it keeps the status."""
    text = _schedule_text(body.schedule, body.interval)
    target = body.target if row is None else _unmask(body.target, row.target)
    errors = schedule_errors(text, body.timezone, rules) + _key_errors(body.key)
    if row is None or target_to_json(target) != stored_target(row):
        errors += _check_target(target, rules)
    if errors:
        raise InvalidRequest(errors)
    paused = (
        body.paused if isinstance(body.paused, bool) else row is not None and row.status == "paused"
    )
    return JobSpec(
        name=body.name,
        attributes=body.attributes,
        schedule=text.strip(),
        timezone=body.timezone,
        target=target_to_json(target),
        max_attempts=body.max_attempts,
        backoff_s=body.backoff_s,
        backoff_max_s=body.backoff_max_s,
        timeout_s=body.timeout_s,
        misfire_policy=body.misfire_policy,
        misfire_grace_s=body.misfire_grace_s,
        overlap=body.overlap,
        paused=paused,
        key=body.key,
        managed_by=body.managed_by,
    )


def stored_target(row: JobRow) -> dict[str, Any]:
    """A job's stored target as the API would store it now (every field present)."""
    return target_to_json(target_from_json(row.target))


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
    key = None if patch.key is UNSET else patch.key  # a stored key is not judged again
    errors = schedule_errors(text, timezone, rules) + sent + _key_errors(key)
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
        key=pick(patch.key, row.key),
        managed_by=pick(patch.managed_by, row.managed_by),
    )


def schedule_state(spec: JobSpec, now: datetime) -> tuple[JobStatus, datetime | None]:
    """Status and next tick of a job starting from `now`: resuming never runs missed ticks."""
    if spec.paused:
        return "paused", None
    parsed = schedule.parse(spec.schedule)
    next_run_at = schedule.first_fire(parsed, schedule.parse_timezone(spec.timezone), now)
    return ("active", next_run_at) if next_run_at is not None else ("completed", None)


# Fields added since fingerprints were first stored: left out while unset, so that a
# request hashes as it did before them (a retry may reach a replica of either release).
_NEWER_FIELDS = ("key", "managed_by")


def request_hash(body: JobCreate) -> str:
    """A fingerprint of a create request, blind to JSON whitespace and key order (at
    every depth: `attributes` and a webhook body are dicts in the client's order)."""
    fields: dict[str, Any] = msgspec.to_builtins(body)
    for name in _NEWER_FIELDS:
        if fields[name] is None:
            del fields[name]
    return hashlib.sha256(msgspec.json.encode(fields, order="sorted")).hexdigest()


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
    # Nothing inserted: the tenant has a job with this Idempotency-Key or this key.
    if idempotency_key is not None:
        earlier = await store.job_get_by_idempotency_key(pool, tenant, idempotency_key)
        if earlier is not None:
            job, earlier_hash = earlier
            if earlier_hash != fingerprint:
                raise IdempotencyConflict()
            return job, True
    if spec.key is not None and await store.job_get_by_key(pool, tenant, spec.key) is not None:
        raise KeyConflict(f"another job already has the key {spec.key!r}")
    # The job in the way was deleted in between: a new one is right.
    return await create(pool, tenant, body, rules, idempotency_key)


def _reschedules(row: JobRow, spec: JobSpec) -> bool:
    return (
        spec.schedule != row.schedule
        or spec.timezone != row.timezone
        or spec.paused != (row.status == "paused")
    )


# A job named by its id or by its key.
JobRef = int | str
T = TypeVar("T")


def not_found(job: JobRef) -> NotFound:
    """The 404 of a job that does not exist (or is another tenant's)."""
    return NotFound(
        f"job {job} does not exist" if isinstance(job, int) else f"no job has the key {job!r}"
    )


async def _lock(conn: Connection, tenant: str, job: JobRef) -> JobRow | None:
    if isinstance(job, int):
        return await store.job_lock(conn, tenant, job)
    return await store.job_lock_by_key(conn, tenant, job)


async def transaction(pool: Pool, work: Callable[[Connection], Awaitable[T]]) -> T:
    """`work` in a transaction, run once more if a migration changed the row type of a
    statement asyncpg had prepared: inside a transaction it cannot prepare it again, so it
    drops its caches and raises. This release's statements name the columns of jobs they
    return, so an expand of jobs does not do that (migrations/0006_job_keys.sql says why
    it matters); this is the net under that rule."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            return await work(conn)
    except asyncpg.InvalidCachedStatementError:
        async with pool.acquire() as conn, conn.transaction():
            return await work(conn)


async def write(conn: Connection, tenant: str, row: JobRow, spec: JobSpec) -> JobRow:
    """Write `spec` over the locked `row`; a schedule, zone or pause change replans it."""
    status, next_run_at = row.status, row.next_run_at
    if _reschedules(row, spec):
        status, next_run_at = schedule_state(spec, await store.db_now(conn))
        if status == "paused":
            await store.runs_skip_pending(conn, row.id)
    updated = await store.job_update(
        conn, tenant, row.id, spec, status=status, next_run_at=next_run_at
    )
    assert updated is not None  # locked by the caller
    return updated


async def update(
    pool: Pool,
    tenant: str,
    job: JobRef,
    patch: JobPatch,
    rules: Rules,
    if_match: int | None,
) -> JobRow:
    """Apply a PATCH in one transaction; a schedule, zone or pause change replans the job."""

    async def work(conn: Connection) -> JobRow:
        row = await _lock(conn, tenant, job)
        if row is None:
            raise not_found(job)
        if if_match is not None and if_match != row.version:
            raise VersionMismatch(f"job {job} is at version {row.version}, not {if_match}")
        return await write(conn, tenant, row, spec_from_patch(row, patch, rules))

    return await transaction(pool, work)
