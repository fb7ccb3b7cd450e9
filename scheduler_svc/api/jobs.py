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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from msgspec import UNSET

from scheduler_svc import schedule
from scheduler_svc.errors import (
    FieldError,
    InvalidRequest,
)
from scheduler_svc.models import (
    KEY_PATTERN,
    AlertSettings,
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


def _alerts_errors(alerts: AlertSettings | None, rules: Rules) -> list[FieldError]:
    """A job's own alert URL is a webhook like any other: the same guard (SCHEDULER_ALERT_URL,
    the operator's, is not checked)."""
    if alerts is None or alerts.url is None:
        return []
    problem = url_problem(alerts.url, allow_private=rules.allow_private_webhooks)
    return [] if problem is None else [FieldError("alerts.url", problem)]


def stored_alerts(alerts: AlertSettings | None) -> dict[str, Any] | None:
    """Alert settings as jobs.alerts keeps them (what alert_wanted in schema.sql reads)."""
    return None if alerts is None else msgspec.to_builtins(alerts)


def _unique(tags: list[str]) -> list[str]:
    """Tags without repeats, in the order sent."""
    return list(dict.fromkeys(tags))


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
    if row is None or stored_alerts(body.alerts) != row.alerts:
        errors += _alerts_errors(body.alerts, rules)
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
        tags=_unique(body.tags),
        jitter_s=body.jitter_s,
        alerts=stored_alerts(body.alerts),
        # A replace keeps a window that is on; a create has none.
        paused_until=row.paused_until if row is not None and paused else None,
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
    alerts = row.alerts if patch.alerts is UNSET else stored_alerts(patch.alerts)
    sent += [] if patch.alerts is UNSET else _alerts_errors(patch.alerts, rules)
    errors = schedule_errors(text, timezone, rules) + sent + _key_errors(key)
    if errors:
        raise InvalidRequest(errors)
    paused = pick(patch.paused, row.status == "paused")
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
        paused=paused,
        key=pick(patch.key, row.key),
        managed_by=pick(patch.managed_by, row.managed_by),
        tags=row.tags if patch.tags is UNSET else _unique(patch.tags),
        jitter_s=pick(patch.jitter_s, row.jitter_s),
        alerts=alerts,
        # A window ends with the pause: resuming (or pausing again without one) drops it.
        paused_until=row.paused_until if paused and row.status == "paused" else None,
    )


def schedule_state(spec: JobSpec, now: datetime) -> tuple[JobStatus, datetime | None]:
    """Status and next tick of a job starting from `now`: resuming never runs missed ticks."""
    if spec.paused:
        return "paused", None
    parsed = schedule.parse(spec.schedule)
    next_run_at = schedule.first_fire(parsed, schedule.parse_timezone(spec.timezone), now)
    return ("active", next_run_at) if next_run_at is not None else ("completed", None)


# Fields added since fingerprints were first stored, with their defaults: left out while
# at their default, so that a request hashes as it did before them (a retry may reach a
# replica of either release).
_NEWER_FIELDS: dict[str, Any] = {
    "key": None,
    "managed_by": None,
    "tags": [],
    "jitter_s": 0.0,
    "alerts": None,
}


def request_hash(body: JobCreate) -> str:
    """A fingerprint of a create request, blind to JSON whitespace and key order (at
    every depth: `attributes` and a webhook body are dicts in the client's order)."""
    fields: dict[str, Any] = msgspec.to_builtins(body)
    for name, default in _NEWER_FIELDS.items():
        if fields.get(name, default) == default:
            fields.pop(name, None)
    return hashlib.sha256(msgspec.json.encode(fields, order="sorted")).hexdigest()
