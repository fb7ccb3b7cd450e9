"""The audit trail (SPEC §8): who changed a job or run through the API, and how.

`record` (and `record_many`, for bulk calls) writes one row per change on the
connection of the transaction that makes the change, so that the row commits or rolls
back with it; a create's row is written by the creating statement itself
(`store.job_insert`, with `created_changes`). `job_changes` is the field-level diff a
row carries, with every secret shown as "***". An `AuditContext` says who acted: the
API builds one per request (`api.audit`: the `audit` dependency); automatic changes
use `SYSTEM`.

May import `models`, `redact` and `store`; knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import msgspec

from scheduler_svc import store
from scheduler_svc.models import AlertSettings, AuditAction, JobOut, JobRow, JobSpec, JobStatus
from scheduler_svc.redact import MASK, SECRET_WORDS, SENSITIVE_HEADERS, Redactor
from scheduler_svc.store.sql import Conn

__all__ = [
    "SYSTEM",
    "AuditAction",
    "AuditContext",
    "created_changes",
    "job_changes",
    "record",
    "record_many",
]

Changes = dict[str, list[Any]]


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who made a change: the API key's prefix, the JWT's subject, `open` or `system`;
    and the id of the request that made it (None for automatic changes)."""

    actor: str
    request_id: str | None


# Changes the service makes by itself (a maintenance window's end).
SYSTEM = AuditContext("system", None)

# Fields of a job that the service keeps by itself, or that repeat another under the
# old service's name: a diff of them says nothing about what someone changed.
BOOKKEEPING = frozenset(
    {
        "id",
        "version",
        "created_at",
        "updated_at",
        "next_run_at",
        "last_run_at",
        "last_run_status",
        "interval",
        "lastRunTimestamp",
        "nextRunTimestamp",
    }
)
# What a diff compares: the fields a client sees, in the order the API shows them.
FIELDS = tuple(f for f in JobOut.__struct_fields__ if f not in BOOKKEEPING)

# Masks credentials inside free text: a URL's password, a bearer token, one of our keys.
_redactor = Redactor()


def _secret_header(name: str) -> bool:
    # Wider than what the API masks (SENSITIVE_HEADERS): the trail is kept for a month
    # and read by anyone of the tenant with jobs:read, so any credential-like name counts.
    lowered = name.lower()
    return lowered in SENSITIVE_HEADERS or any(word in lowered for word in SECRET_WORDS)


def _masked_target(target: Any) -> Any:
    if not isinstance(target, dict):
        return target
    shown = dict(target)
    if isinstance(shown.get("url"), str):
        shown["url"] = _redactor.value(None, shown["url"])
    headers = shown.get("headers")
    if isinstance(headers, dict):
        shown["headers"] = {k: MASK if _secret_header(k) else v for k, v in headers.items()}
    return shown


def _masked(field: str, value: Any) -> Any:
    if field == "target":
        return _masked_target(value)
    if field == "alerts" and isinstance(value, dict) and isinstance(value.get("url"), str):
        return {**value, "url": _redactor.value(None, value["url"])}
    return value


def _fields(job: JobOut | JobRow | None) -> dict[str, Any]:
    """The compared fields of a job as JSON values (a row's secrets still in them)."""
    if job is None:
        return {}
    builtins: dict[str, Any] = msgspec.to_builtins(job)
    if isinstance(job, JobRow):
        _as_shown(builtins, job.alerts)
    return {f: builtins.get(f) for f in FIELDS}


def _as_shown(builtins: dict[str, Any], alerts: dict[str, Any] | None) -> None:
    if isinstance(alerts, dict):
        # As the API shows it (JobOut.alerts), so that a row and a view compare alike.
        builtins["alerts"] = msgspec.to_builtins(msgspec.convert(alerts, AlertSettings))


def created_changes(spec: JobSpec, status: JobStatus) -> Changes:
    """`job_changes(None, row)` of the row that inserting `spec` with `status` returns,
    reckoned before the insert from what it writes, so that the inserting statement can
    write the audit row too.

    The row holds `spec`'s values as they are, but for `paused_until`, which comes back
    in UTC; a number inside a JSON field may come back written otherwise (1e300 as its
    301 digits), as the audit row's own JSON then writes it. tests/test_audit.py holds
    the two equal.
    """
    builtins: dict[str, Any] = msgspec.to_builtins(spec)
    builtins["status"] = status
    if spec.paused_until is not None:
        builtins["paused_until"] = msgspec.to_builtins(spec.paused_until.astimezone(UTC))
    _as_shown(builtins, spec.alerts)
    return _diff({}, {f: builtins.get(f) for f in FIELDS})


def job_changes(before: JobOut | JobRow | None, after: JobOut | JobRow | None) -> Changes:
    """{field: [old, new]} for each client-visible field that differs (a create: [null,
    new] for each field with a value; a delete: [old, null]), secrets as "***".

    Pass rows (JobRow) to see a change of a secret header's value, which a view
    (JobOut, already masked) hides: the field then shows as changed, "***" both sides.
    """
    return _diff(_fields(before), _fields(after))


def _diff(old: dict[str, Any], new: dict[str, Any]) -> Changes:
    changes: Changes = {}
    for field in FIELDS:
        was, now = old.get(field), new.get(field)
        if was != now:
            changes[field] = [_masked(field, was), _masked(field, now)]
    return changes


async def record(
    conn: Conn,
    tenant: str,
    ctx: AuditContext,
    action: AuditAction,
    *,
    job_id: int | None,
    run_id: int | None = None,
    changes: Mapping[str, list[Any]] | None = None,
) -> None:
    """Write one audit row on `conn`, in the caller's transaction (which makes the change)."""
    await store.audit_insert(
        conn, tenant, ctx.actor, action, job_id, run_id, dict(changes or {}), ctx.request_id
    )


async def record_many(
    conn: Conn,
    tenant: str,
    ctx: AuditContext,
    action: AuditAction,
    *,
    job_ids: Sequence[int],
    changes: Sequence[Mapping[str, list[Any]]] | None = None,
) -> None:
    """Write one audit row per job of `job_ids` (with `changes[i]` for job_ids[i]) in one
    statement, in the caller's transaction."""
    if not job_ids:
        return
    if changes is not None and len(changes) != len(job_ids):
        raise ValueError("record_many needs one changes mapping per job id")
    each = [dict(c) for c in changes] if changes is not None else [{} for _ in job_ids]
    await store.audit_insert_many(
        conn, tenant, ctx.actor, action, list(job_ids), each, ctx.request_id
    )
