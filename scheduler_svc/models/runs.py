"""Runs on the wire: the row the store returns and the view the API shows, and what the
scheduler and the executors pass each other (claimed jobs, leased runs, results)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

import msgspec
from msgspec import Struct

from scheduler_svc.models.jobs import MisfirePolicy, Overlap
from scheduler_svc.schedule.overlap import Unfinished

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
    jitter_s: float = 0.0
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
    due_at: datetime | None = None  # its tick plus its job's jitter; None: the tick


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
