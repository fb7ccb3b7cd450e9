"""Housekeeping that one replica at a time does: pruning old runs."""

from __future__ import annotations

import asyncio

import structlog

from scheduler_svc import store
from scheduler_svc.engine.aio import wait_any
from scheduler_svc.store.db import DATABASE_ERRORS, Pool

log = structlog.get_logger("scheduler_svc.engine.maintenance")

# Arbitrary, fixed: whoever holds this advisory lock (per transaction) prunes.
MAINTENANCE_LOCK_KEY = 0x5C4ED02E
PRUNE_BATCH = 5000


async def prune_once(pool: Pool, retention_days: int, batch: int = PRUNE_BATCH) -> int:
    """Delete finished runs older than the retention, batch by batch; return how many."""
    total = 0
    while True:
        deleted = await store.runs_prune(pool, retention_days, batch, MAINTENANCE_LOCK_KEY)
        total += deleted
        if deleted < batch:
            return total


async def run(pool: Pool, retention_days: int, stop: asyncio.Event, every_s: float = 300) -> None:
    """Prune at start and every `every_s` seconds until `stop`."""
    while not stop.is_set():
        try:
            pruned = await prune_once(pool, retention_days)
            if pruned:
                log.info("runs_pruned", runs=pruned, retention_days=retention_days)
        except DATABASE_ERRORS as exc:
            log.warning("maintenance_database_error", error=str(exc))
        await wait_any(every_s, stop)
