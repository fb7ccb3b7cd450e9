"""What the console's pages read besides jobs and runs: lines of the jobs list, their
recent outcomes, the overview's failures, runs under way, next fires and replicas."""

from __future__ import annotations

from datetime import datetime

from msgspec import Struct


class JobLine(Struct, frozen=True, kw_only=True):
    """A job as one line of the console's jobs list."""

    id: int
    name: str
    schedule: str
    timezone: str
    status: str
    next_run_at: datetime | None
    paused_until: datetime | None
    tags: list[str]
    target_type: str


class RecentRuns(Struct, frozen=True, kw_only=True):
    """A job's latest runs, oldest first (the jobs list's strip of outcomes)."""

    job_id: int
    statuses: list[str]
    run_ids: list[int]


class FailureGroup(Struct, frozen=True, kw_only=True):
    """Failed runs of the last hour that share an error text (its start)."""

    error: str
    count: int
    last_at: datetime
    last_run_id: int
    jobs: int


class RunningRun(Struct, frozen=True, kw_only=True):
    """A run under way: whose, since when, on which replica, until when leased."""

    id: int
    job_id: int
    job_name: str
    started_at: datetime | None
    worker: str | None
    lease_expires_at: datetime | None


class NextFire(Struct, frozen=True, kw_only=True):
    """An active job's next tick."""

    job_id: int
    name: str
    next_run_at: datetime
    timezone: str


class Replica(Struct, frozen=True, kw_only=True):
    """A replica with sessions on the database now, by the name its pool gives them."""

    worker: str
    schema_version: int | None  # None: a release that did not say
    sessions: int
    connected_since: datetime
    client: str | None
