"""Queries on the alerts outbox (SPEC §8): the missed-tick check, claiming, recording and
releasing deliveries, and the tenant's list."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from scheduler_svc.models import AlertKind, AlertStatus
from scheduler_svc.store.history_ids import days_of_ids
from scheduler_svc.store.sql import QUERIES, Conn

# The advisory lock of the missed-tick check (pg_try_advisory_xact_lock's first key; the
# second is the replica's tenant shard). Arbitrary, fixed.
MISSED_LOCK_KEY = 0x5C4A1E27


class AlertRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `alerts`."""

    id: int
    tenant: str
    job_id: int
    job_name: str
    run_id: int | None
    event: AlertKind
    scheduled_for: datetime
    url: str | None  # None: SCHEDULER_ALERT_URL
    body: dict[str, Any]  # what is POSTed, but `at`
    status: AlertStatus
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


def _alert(record: asyncpg.Record) -> AlertRow:
    return msgspec.convert(dict(record), AlertRow)


class Missed(msgspec.Struct, frozen=True):
    """A job.missed alert the check made."""

    id: int
    job_id: int
    run_id: int | None
    scheduled_for: datetime


async def alerts_check_missed(
    conn: Conn,
    operator_url: bool,
    shard: int,
    tenants: Sequence[str] | None,
    now: datetime | None = None,
) -> list[Missed] | None:
    """Insert a job.missed alert for each tick of `tenants` (None: all) that is missed
    (as of `now`, None: the database clock) and not alerted yet, if this replica holds the
    check's lock for shard `shard`; the alerts made, or None without the lock."""
    record = await conn.fetchrow(
        QUERIES["alerts_check_missed"],
        operator_url,
        MISSED_LOCK_KEY,
        shard,
        None if tenants is None else list(tenants),
        now,
    )
    assert record is not None
    if not record["held"]:
        return None
    return msgspec.json.decode(record["made"], type=list[Missed])


async def alerts_claim(
    conn: Conn, lease_s: float, limit: int, operator_url: bool, tenants: Sequence[str] | None
) -> list[AlertRow]:
    """Lease up to `limit` due pending alerts of `tenants` (None: all) for `lease_s`
    seconds, counting their attempt; with `operator_url` False, those for
    SCHEDULER_ALERT_URL only once a day old."""
    records = await conn.fetch(
        QUERIES["alerts_claim"],
        lease_s,
        limit,
        operator_url,
        None if tenants is None else list(tenants),
    )
    return [_alert(r) for r in records]


async def alert_record(
    conn: Conn,
    alert_id: int,
    attempts: int,
    status: Literal["delivered", "failed", "pending"],
    delay_s: float | None,
    error: str | None,
) -> bool:
    """Record what the claim at `attempts` of an alert came to (`pending`: retry after
    `delay_s`); False if another sender has taken the alert over meanwhile."""
    found = await conn.fetchval(QUERIES["alert_record"], alert_id, attempts, status, delay_s, error)
    return found is not None


async def alerts_release(conn: Conn, leased: Sequence[tuple[int, int]]) -> None:
    """Give back (id, attempts) leased alerts as due now, their attempt not used up."""
    ids = [i for i, _ in leased]
    await conn.execute(QUERIES["alerts_release"], ids, [a for _, a in leased], *days_of_ids(ids))


async def alerts_list(
    conn: Conn, tenant: str, job_id: int | None, *, before_id: int | None, limit: int
) -> list[AlertRow]:
    """Up to `limit` alerts of `tenant` (of `job_id` if given) with ids below
    `before_id`, newest first."""
    records = await conn.fetch(QUERIES["alerts_list"], tenant, job_id, before_id, limit)
    return [_alert(r) for r in records]
