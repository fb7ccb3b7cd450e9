"""Housekeeping that one replica at a time does: the partitions of run history.

Each pass, under the maintenance lock: create the day partitions of the coming week
(a write whose day has none goes to the default partition and is moved into its day's
partition when that is created, so a missed pass delays, never fails, a write); drop the
days past the retention whole; and delete, in batches, the old finished runs that are
not in a day partition of their own (the default partition, and the runs from before
partitioning, until their partition is dropped whole); and delete the console's counts
of runs per minute (run_minutes) older than a day; and raise the floor of unfinished
runs (store/unfinished.py) to where they begin. Then, on their own session lock,
build the partitions' indexes that a partitioned index made ON ONLY its table lacks
(store/migrate.complete_indexes).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import structlog

from scheduler_svc import store
from scheduler_svc.engine.aio import wait_any
from scheduler_svc.store import migrate
from scheduler_svc.store.db import DATABASE_ERRORS, Pool

log = structlog.get_logger("scheduler_svc.engine.maintenance")

# Arbitrary, fixed: whoever holds this advisory lock (per transaction) does maintenance.
MAINTENANCE_LOCK_KEY = 0x5C4ED02E
PRUNE_BATCH = 5000
# Day partitions are created this many days ahead.
DAYS_AHEAD = 7
# The console's counts of runs per minute are kept this long (its overview shows an hour).
RUN_MINUTES_KEEP_H = 24


@dataclass(frozen=True, slots=True)
class Pass:
    """What one maintenance pass did (`locked`: it held the maintenance lock; another
    replica did this pass's work otherwise)."""

    locked: bool
    created: int
    dropped: tuple[str, ...]
    pruned: int
    # Indexes built on partitions that a partitioned index lacked (store/migrate.py).
    indexed: tuple[str, ...] = ()
    minutes_pruned: int = 0  # rows of run_minutes deleted
    # Where unfinished runs can be, as this pass left it (schema.sql: unfinished_runs_floor).
    unfinished_since: datetime | None = None


async def prune_once(pool: Pool, retention_days: int, batch: int = PRUNE_BATCH) -> int:
    """Delete old finished runs outside day partitions, batch by batch; return how many."""
    total = 0
    while True:
        deleted = await store.runs_prune(pool, retention_days, batch, MAINTENANCE_LOCK_KEY)
        total += deleted
        if deleted < batch:
            return total


async def raise_unfinished_floor(pool: Pool) -> datetime:
    """Raise the floor of unfinished runs to where they begin (store/unfinished.py): the
    look and the write in one transaction that holds it, so that no insert below it
    commits in between."""
    async with pool.acquire() as conn, conn.transaction():
        await store.unfinished_floor_lock(conn)
        return await store.unfinished_floor_raise(conn)


async def maintain_once(pool: Pool, retention_days: int) -> Pass:
    """One pass: partitions ahead, days past the retention dropped, the rest pruned (and
    the console's old counts), the floor of unfinished runs raised."""
    created = await store.history_partitions_create(pool, DAYS_AHEAD, MAINTENANCE_LOCK_KEY)
    dropped = await store.history_partitions_detach(pool, retention_days, MAINTENANCE_LOCK_KEY)
    for partition in dropped:  # each in a transaction of its own, no lock on the history
        await store.history_partition_drop(pool, partition)
    pruned = await prune_once(pool, retention_days)
    minutes = await store.run_minutes_prune(pool, RUN_MINUTES_KEEP_H, MAINTENANCE_LOCK_KEY)
    since = await raise_unfinished_floor(pool)
    # Last: building an index waits for the transactions under way on its partition.
    async with pool.acquire() as conn:
        indexed = await migrate.complete_indexes(conn)
    locked = created is not None
    return Pass(locked, created or 0, tuple(dropped), pruned, tuple(indexed), minutes, since)


async def run(pool: Pool, retention_days: int, stop: asyncio.Event, every_s: float = 300) -> None:
    """Maintain at start and every `every_s` seconds until `stop`; at start, warn if the
    server does not vacuum by itself."""
    try:
        if not await store.autovacuum_on(pool):
            log.warning(
                "autovacuum_off",
                hint="turn autovacuum on: jobs and job_runs bloat without it and ticks start late",
            )
    except DATABASE_ERRORS as exc:
        log.warning("maintenance_database_error", error=str(exc))
    while not stop.is_set():
        try:
            done = await maintain_once(pool, retention_days)
            if done.created or done.dropped or done.pruned or done.indexed or done.minutes_pruned:
                log.info(
                    "history_maintained",
                    partitions_created=done.created,
                    partitions_dropped=list(done.dropped),
                    runs_pruned=done.pruned,
                    run_minutes_pruned=done.minutes_pruned,
                    indexes_built=list(done.indexed),
                    retention_days=retention_days,
                )
        except DATABASE_ERRORS as exc:
            # A lock_timeout lands here too: the next pass tries again.
            log.warning("maintenance_database_error", error=str(exc))
        await wait_any(every_s, stop)
