"""Where unfinished runs can be (schema.sql: unfinished_runs_floor, store/unfinished.py):
kept true by the inserts below it and by maintenance, which wait for each other, and
what the due claim and the executor's exchange read because of it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scheduler_svc import store
from scheduler_svc.engine import maintenance
from scheduler_svc.store.history_ids import BEFORE_ALL
from tests.factories import make_job, plan_nodes
from tests.replicas import eventually

pytestmark = [pytest.mark.usefixtures("clean", "week_of_partitions"), pytest.mark.timeout(60)]

FLOOR = "SELECT since FROM unfinished_runs_floor"
INSERT_RUN = """
INSERT INTO job_runs (id, job_id, tenant, scheduled_for, status, finished_at)
VALUES (run_id($2), $1, 'default', $2, $3,
        CASE WHEN $3 <> 'pending' THEN $2::timestamptz END)
RETURNING id
"""
# A session that waits for a row lock on the floor.
WAITING = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1
"""


def day_before_yesterday(now: datetime) -> datetime:
    """Where maintenance leaves the floor when every unfinished run is younger."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=2)


async def test_maintenance_raises_the_floor_to_the_oldest_unfinished_tick_or_the_day_before_yesterday(  # noqa: E501
    pool: Any,
) -> None:
    await pool.execute("SELECT history_partitions_create(7, 10)")
    job = await make_job(pool, next_run_at=None, paused=True)
    now = await store.db_now(pool)
    await pool.execute(INSERT_RUN, job.id, now - timedelta(days=8), "succeeded")
    pending = await pool.fetchval(INSERT_RUN, job.id, now - timedelta(days=5), "pending")
    assert await pool.fetchval(FLOOR) == BEFORE_ALL.replace(tzinfo=None)  # as made: everywhere

    done = await maintenance.maintain_once(pool, 30)
    assert done.unfinished_since == now - timedelta(days=5)
    assert await pool.fetchval(FLOOR) == now - timedelta(days=5)

    await pool.execute(
        "UPDATE job_runs SET status = 'succeeded', finished_at = now() WHERE id = $1", pending
    )
    done = await maintenance.maintain_once(pool, 30)
    assert done.unfinished_since == day_before_yesterday(now)


async def test_only_a_run_inserted_unfinished_for_a_tick_over_a_day_old_lowers_the_floor(
    pool: Any,
) -> None:
    await pool.execute("SELECT history_partitions_create(7, 10)")
    job = await make_job(pool, next_run_at=None, paused=True)
    now = await store.db_now(pool)
    floor = await maintenance.raise_unfinished_floor(pool)
    assert floor == day_before_yesterday(now)
    await pool.execute(INSERT_RUN, job.id, now - timedelta(hours=20), "pending")
    await pool.execute(INSERT_RUN, job.id, now - timedelta(days=6), "succeeded")
    assert await pool.fetchval(FLOOR) == floor
    await pool.execute(INSERT_RUN, job.id, now - timedelta(days=3), "pending")
    assert await pool.fetchval(FLOOR) == now - timedelta(days=3)


async def test_raising_the_floor_waits_for_an_insert_below_it_under_way(pool: Any) -> None:
    await pool.execute("SELECT history_partitions_create(7, 10)")
    job = await make_job(pool, next_run_at=None, paused=True)
    now = await store.db_now(pool)
    await maintenance.raise_unfinished_floor(pool)
    tick = now - timedelta(days=4)
    async with pool.acquire() as inserter:
        insert = inserter.transaction()
        await insert.start()
        await inserter.execute(INSERT_RUN, job.id, tick, "pending")
        raising = asyncio.create_task(maintenance.raise_unfinished_floor(pool))
        await eventually(
            lambda: pool.fetchval(WAITING, "%unfinished_runs_floor FOR UPDATE%"),
            10,
            "the raise to wait for the insert",
        )
        assert not raising.done()
        await insert.commit()
    # Its snapshot, taken once it held the floor, has the run.
    assert await raising == tick
    assert await pool.fetchval(FLOOR) == tick


async def test_an_insert_below_the_floor_waits_for_a_raise_under_way_and_lowers_it_after(
    pool: Any,
) -> None:
    await pool.execute("SELECT history_partitions_create(7, 10)")
    job = await make_job(pool, next_run_at=None, paused=True)
    now = await store.db_now(pool)
    tick = now - timedelta(days=4)
    async with pool.acquire() as conn:
        async with conn.transaction():
            await store.unfinished_floor_lock(conn)
            inserting = asyncio.create_task(pool.fetchval(INSERT_RUN, job.id, tick, "pending"))
            await eventually(
                lambda: pool.fetchval(WAITING, "%INSERT INTO job_runs%"),
                10,
                "the insert to wait for the raise",
            )
            # The raise cannot see the run, and sets the floor above it...
            assert await store.unfinished_floor_raise(conn) == day_before_yesterday(now)
        # ...and the insert, let through by the commit, lowers it again.
        await inserting
    assert await pool.fetchval(FLOOR) == tick


async def scanned_days(conn: Any, query: str, *args: Any) -> set[str]:
    """The partitions of job_runs that `query`'s generic plan scans with `args`."""
    plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
    return {
        node["Relation Name"]
        for node in plan_nodes(plan[0]["Plan"])
        if node.get("Relation Name", "").startswith("job_runs_")
    }


def older(partitions: set[str], floor: datetime) -> set[str]:
    """The day partitions (job_runs_YYYYMMDD) among `partitions` that end before `floor`."""
    return {
        name
        for name in partitions
        if name[-8:].isdigit()
        and datetime.strptime(name[-8:], "%Y%m%d").replace(tzinfo=UTC) + timedelta(days=1) <= floor
    }


async def test_the_claim_and_the_exchange_scan_only_the_days_from_the_floor(pool: Any) -> None:
    await pool.execute("SELECT history_partitions_create(7, 30)")
    now = await store.db_now(pool)
    await make_job(pool, next_run_at=now - timedelta(seconds=1), overlap="forbid")
    floor = await maintenance.raise_unfinished_floor(pool)
    exchange = ("w", [], [], [], [], [], [], 10, 10.0, True, [], None, False)
    scanned = {}
    async with pool.acquire() as conn, conn.transaction():
        # The plans the service runs: prepared once, generic.
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for since in (BEFORE_ALL, floor):
            claim = store.QUERIES["jobs_claim_due"]
            scanned["claim", since] = await scanned_days(conn, claim, None, 10, None, since)
            scanned["exchange", since] = await scanned_days(
                conn, store.QUERIES["runs_exchange"], *exchange, BEFORE_ALL, BEFORE_ALL, since
            )
    for statement in ("claim", "exchange"):
        # Without a floor, every day of the month; with it, none before it.
        assert len(older(scanned[statement, BEFORE_ALL], floor)) >= 27, statement
        assert older(scanned[statement, floor], floor) == set(), statement
        assert "job_runs_default" in scanned[statement, floor], statement


async def test_a_claim_that_read_the_floor_too_high_claims_again_and_sees_an_older_run(
    pool: Any,
) -> None:
    """Under overlap forbid, a claim that missed a job's unfinished run would run the
    job's next tick beside it."""
    await pool.execute("SELECT history_partitions_create(7, 10)")
    now = await store.db_now(pool)
    job = await make_job(pool, next_run_at=now - timedelta(seconds=1), overlap="forbid")
    await maintenance.raise_unfinished_floor(pool)
    reading = store.UnfinishedFloor(since=day_before_yesterday(now))
    tick = now - timedelta(days=3)  # a backlog's run, inserted after that reading
    old_run = await pool.fetchval(INSERT_RUN, job.id, tick, "pending")
    async with pool.acquire() as conn, conn.transaction():
        [claimed] = await store.jobs_claim_due(conn, None, 10, None, reading)
    assert claimed.id == job.id
    assert claimed.unfinished is not None and claimed.unfinished.blocker == old_run
    assert reading.since == tick


async def test_an_exchange_that_read_the_floor_too_high_asks_for_another_that_leases_the_run(
    pool: Any,
) -> None:
    await pool.execute("SELECT history_partitions_create(7, 10)")
    now = await store.db_now(pool)
    job = await make_job(pool, next_run_at=None, paused=True)
    await maintenance.raise_unfinished_floor(pool)
    reading = store.UnfinishedFloor(since=day_before_yesterday(now))
    tick = now - timedelta(days=3)
    old_run = await pool.fetchval(INSERT_RUN, job.id, tick, "pending")
    first = await store.runs_exchange(pool, "w", [], 10, 10.0, leases=False, floor=reading)
    assert first.leased == [] and first.next_attempt_in_s == 0.0
    assert reading.since == tick
    again = await store.runs_exchange(pool, "w", [], 10, 10.0, leases=False, floor=reading)
    assert [run.id for run in again.leased] == [old_run]


async def test_a_statement_that_looked_from_above_the_floor_says_so_whatever_was_read_since() -> (
    None
):
    """The scheduler's passes run side by side on one reading: one that saw the floor
    lowered must not hide that another pass looked from above it."""
    now = datetime.now(UTC)
    reading = store.UnfinishedFloor(since=now)
    looked_from = reading.since  # a pass's claim, under way
    assert reading.read(now - timedelta(days=3), now - timedelta(days=3)) is False  # another
    assert reading.read(now - timedelta(days=3), looked_from) is True
    assert reading.since == now - timedelta(days=3)
    # asyncpg reads -infinity as a naive datetime.min.
    assert reading.read(datetime.min, BEFORE_ALL) is False
    assert reading.since == BEFORE_ALL
