"""Saying so when the service falls behind its schedule.

An overloaded service does not fail: its ticks start later and later, and under
overlap `forbid` the ones that come due meanwhile are skipped. So each worker looks,
every few seconds, at how far behind the earliest due tick that has not started is
(store.runs_due_backlog): it sets `scheduler_behind_seconds`, and logs
`scheduler_behind` when that passes BEHIND_WARN_S (again every REPEAT_S while it
lasts) and `scheduler_caught_up` once it is back under. The third signal, for an
operator, is the job.missed alert of each tick that is late past its job's
`missed_after_s` (engine/alerts.py): it is written whatever made the tick late.

The figure is the database's, so every worker reports the same one, even a worker
scoped to some tenants (SCHEDULER_TENANTS).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

import structlog

from scheduler_svc import metrics, store
from scheduler_svc.engine.aio import wait_any
from scheduler_svc.store import Backlog
from scheduler_svc.store.db import DATABASE_ERRORS, Pool

log = structlog.get_logger("scheduler_svc.engine.behind")

# Behind by this much, ticks are late by far more than any pass gap or a call's
# length: no replica is keeping up (a steady 5,000 ticks/s runs about 50 ms behind).
BEHIND_WARN_S = 5.0
# How often a worker looks; the query reads partial indexes only.
CHECK_EVERY_S = 5.0
# While it stays behind, the warning comes again this often, not on every look.
REPEAT_S = 60.0

Said = Literal["behind", "still_behind", "caught_up"]


@dataclass(slots=True)
class BehindWatch:
    """What one worker has said about being behind, and when (loop time)."""

    warn_s: float = BEHIND_WARN_S
    repeat_s: float = REPEAT_S
    since: float | None = None  # when it was first seen behind, while it is
    said_at: float = 0.0  # when it last said so

    def observe(self, backlog: Backlog, now: float) -> Said | None:
        """What to say about this look at the backlog, if anything."""
        if backlog.behind_s >= self.warn_s:
            if self.since is None:
                self.since, self.said_at = now, now
                return "behind"
            if now - self.said_at >= self.repeat_s:
                self.said_at = now
                return "still_behind"
            return None
        if self.since is not None:
            self.since = None
            return "caught_up"
        return None


async def look(pool: Pool, watch: BehindWatch, worker_id: str, now: float) -> Said | None:
    """One look (at loop time `now`): the gauges, and a line if it is time for one."""
    try:
        backlog = await store.runs_due_backlog(pool)
    except DATABASE_ERRORS as exc:
        # The scheduler and executors say so already; the gauges say "unknown".
        log.debug("behind_check_failed", error=str(exc))
        metrics.backlog_unknown()
        return None
    metrics.backlog_read(backlog)
    said = watch.observe(backlog, now)
    if said == "caught_up":
        log.info("scheduler_caught_up", worker=worker_id, behind_s=backlog.behind_s)
    elif said is not None:
        assert watch.since is not None
        log.warning(
            "scheduler_behind",
            worker=worker_id,
            behind_s=round(backlog.behind_s, 3),
            due_ticks=backlog.ticks,
            for_s=round(now - watch.since, 1),
            hint="ticks start late and, under overlap forbid, are skipped: add workers or "
            "CPU (deploy/README.md#scaling), or raise SCHEDULER_CONCURRENCY if every slot "
            "is busy",
        )
    return said


async def run(pool: Pool, worker_id: str, stop: asyncio.Event) -> None:
    """Look every CHECK_EVERY_S until `stop`."""
    watch = BehindWatch()
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        await look(pool, watch, worker_id, loop.time())
        await wait_any(CHECK_EVERY_S, stop)
