"""Queries on the console's per-minute rollup of runs (run_minutes): a replica's counts
added, a tenant's minutes read back, old minutes pruned."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from scheduler_svc.models import LAG_BUCKETS_MS, MinuteStats
from scheduler_svc.store.sql import QUERIES, Conn


async def run_minutes_add(conn: Conn, worker: str, rows: Sequence[tuple[str, MinuteStats]]) -> None:
    """Add `worker`'s counts, (tenant, minute's counts) each, to what it wrote before, in
    one statement. Each row's lag counts are LAG_BUCKETS_MS long, and no (tenant, minute)
    comes twice."""
    width = len(LAG_BUCKETS_MS)
    lags: list[int] = []
    for _, stats in rows:
        assert len(stats.lag_counts) == width, "one count per lag bucket"
        lags += stats.lag_counts
    await conn.execute(
        QUERIES["run_minutes_add"],
        worker,
        [tenant for tenant, _ in rows],
        [stats.minute for _, stats in rows],
        [stats.succeeded for _, stats in rows],
        [stats.failed for _, stats in rows],
        [stats.skipped for _, stats in rows],
        [stats.cancelled for _, stats in rows],
        [stats.retried for _, stats in rows],
        lags,
        width,
    )


async def run_minutes_read(conn: Conn, tenant: str, since: datetime) -> list[MinuteStats]:
    """`tenant`'s minutes from `since` on, oldest first, each summed over the replicas
    that counted it (minutes without a run are absent)."""
    records = await conn.fetch(QUERIES["run_minutes_read"], tenant, since)
    return [msgspec.convert(dict(r), MinuteStats) for r in records]


async def run_minutes_prune(conn: Conn, keep_hours: int, lock_key: int) -> int:
    """Delete the minutes more than `keep_hours` old, if this replica holds the maintenance
    lock `lock_key` for the transaction; how many rows went."""
    deleted: int = await conn.fetchval(QUERIES["run_minutes_prune"], keep_hours, lock_key)
    return deleted


async def console_pulse(conn: Conn, payloads: Sequence[str]) -> None:
    """Notify scheduler_console once per payload (engine/rollup.py's pulse)."""
    await conn.execute(QUERIES["console_pulse"], list(payloads))
