"""Where unfinished runs can be: the floor of their ticks (schema.sql:
unfinished_runs_floor), as a replica reads it and as maintenance raises it.

The statements that look for unfinished runs (jobs_claim_due, runs_exchange) take the
replica's last reading as a parameter, so that a generic plan prunes job_runs to the
days from it on before it sets up a scan of each; without it they set one up for every
day of the retention. Each returns the floor its snapshot holds. A reading above that
means a run was inserted below it since (a backlog after a long outage): the claim is
made again at once, in its transaction, since it must see every unfinished run of a job
before it decides an overlap; the exchange, whose lease of due runs may only have missed
some, tells its executor to exchange again at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from scheduler_svc.store.history_ids import BEFORE_ALL
from scheduler_svc.store.sql import QUERIES, Connection


@dataclass(slots=True)
class UnfinishedFloor:
    """A replica's reading of the floor; a new one looks everywhere."""

    since: datetime = BEFORE_ALL

    def read(self, floor: datetime, looked_from: datetime) -> bool:
        """Take the floor a statement returned, having looked for unfinished runs from
        `looked_from` (the reading it was given: another statement of the replica may
        have taken a newer one since); whether it looked from above the floor, and may
        have missed some."""
        if floor.tzinfo is None:  # asyncpg reads -infinity as a naive datetime.min
            floor = floor.replace(tzinfo=UTC)
        self.since = floor
        return floor < looked_from


async def unfinished_floor_lock(conn: Connection) -> datetime:
    """Hold the floor until the caller's transaction ends; its value."""
    since: datetime = await conn.fetchval(QUERIES["unfinished_floor_lock"])
    return since


async def unfinished_floor_raise(conn: Connection) -> datetime:
    """Set the floor to where unfinished runs begin, or to the start of the day before
    yesterday (UTC) if they all begin later; in the transaction that holds it."""
    since: datetime = await conn.fetchval(QUERIES["unfinished_floor_raise"])
    return since
