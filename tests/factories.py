"""Build rows for tests: make_job(pool, schedule="@every 1s", next_run_at=...); and read
them back: runs_of, partitions, and the nodes of a plan (plan_nodes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scheduler_svc import audit, store
from scheduler_svc.models import JobRow, JobSpec, JobStatus, RunRow

DEFAULTS: dict[str, Any] = {
    "name": "job",
    "attributes": {},
    "schedule": "@every 1s",
    "timezone": "UTC",
    "target": {"type": "log"},
    "max_attempts": 3,
    "backoff_s": 10.0,
    "backoff_max_s": 3600.0,
    "timeout_s": 30,
    "misfire_policy": "run_once",
    "misfire_grace_s": 60,
    "overlap": "allow",
    "paused": False,
}


async def make_job(
    conn: store.Conn,
    *,
    next_run_at: datetime | None,
    tenant: str = "default",
    **fields: Any,
) -> JobRow:
    """Insert an active job due at `next_run_at` (fields as in the API, overlap 'allow')."""
    spec = JobSpec(**{**DEFAULTS, **fields})
    status = "paused" if spec.paused else "active"
    row = await store.job_insert(
        conn, tenant, spec, status=status, next_run_at=next_run_at, **audited(spec, status)
    )
    assert row is not None
    return row


def audited(spec: JobSpec, status: JobStatus) -> dict[str, Any]:
    """store.job_insert's audit arguments, for a job a test creates itself."""
    return {"actor": "tests", "changes": audit.created_changes(spec, status), "request_id": None}


async def runs_of(conn: store.Conn, job_id: int) -> list[RunRow]:
    """Every run of a job, oldest tick first."""
    rows = await store.runs_list(conn, "default", job_id, before_id=None, limit=10_000)
    return sorted(rows, key=lambda r: (r.scheduled_for, r.id))


async def partitions(pool: Any) -> dict[str, tuple[datetime, datetime] | None]:
    """job_runs' partitions and their bounds (None: the default)."""
    rows = await pool.fetch("SELECT * FROM history_partitions('job_runs')")
    return {
        r["partition"]: None if r["lower_bound"] is None else (r["lower_bound"], r["upper_bound"])
        for r in rows
    }


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A plan node of EXPLAIN (FORMAT JSON) and every node under it."""
    return [node, *(n for child in node.get("Plans", []) for n in plan_nodes(child))]
