"""Run history partitioned by day (schema.sql, engine/maintenance.py): run ids that tell
their day, the default partition that takes what has no day, partitions made ahead and
dropped whole past the retention, while the engine runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from scheduler_svc import store
from scheduler_svc.config import Settings
from scheduler_svc.engine import maintenance
from scheduler_svc.engine.worker import Worker
from scheduler_svc.models.runs import RunResult
from scheduler_svc.store.history_ids import days_of_ids
from scheduler_svc.targets import Deliverer
from scheduler_svc.targets.http import WebhookClient
from tests.factories import make_job, partitions, plan_nodes
from tests.replicas import eventually

pytestmark = [pytest.mark.usefixtures("clean", "week_of_partitions"), pytest.mark.timeout(60)]

EPOCH_DAY = datetime(2000, 1, 1, tzinfo=UTC)

INSERT_RUNS = """
INSERT INTO job_runs (id, job_id, tenant, scheduled_for, status, finished_at)
SELECT run_id(t), $1, 'default', t, $3, t
FROM unnest($2::timestamptz[]) AS t
RETURNING id, scheduled_for, tableoid::regclass::text AS partition
"""


def day_of(run_id: int) -> datetime:
    return EPOCH_DAY + timedelta(days=run_id >> 37)


async def test_run_ids_tell_the_day_of_their_tick_and_stay_exact_in_javascript(
    pool: Any,
) -> None:
    job = await make_job(pool, next_run_at=None, paused=True)
    now = await store.db_now(pool)
    ticks = [now - timedelta(days=3, minutes=7), now, now + timedelta(days=2, hours=5)]
    await pool.execute("SELECT history_partitions_create(7, 5)")
    rows = await pool.fetch(INSERT_RUNS, job.id, ticks, "succeeded")
    for row in rows:
        tick = row["scheduled_for"].astimezone(UTC)
        assert day_of(row["id"]) == tick.replace(hour=0, minute=0, second=0, microsecond=0)
        assert row["id"] < 2**53
        assert row["partition"] == f"job_runs_{tick:%Y%m%d}"
        found = await store.run_get(pool, "default", row["id"])
        assert found is not None and found.scheduled_for == row["scheduled_for"]
    assert await store.run_get(pool, "other tenant", rows[0]["id"]) is None


async def test_an_insert_without_an_id_gets_one_that_tells_its_day(pool: Any) -> None:
    """What the previous release's inserts get during a rolling upgrade: the job_runs_id
    trigger gives them the id this release's statements compute."""
    job = await make_job(pool, next_run_at=None, paused=True)
    row = await pool.fetchrow(
        "INSERT INTO job_runs (job_id, tenant, scheduled_for) VALUES ($1, 'default', now())"
        " RETURNING id, scheduled_for, tableoid::regclass::text AS partition",
        job.id,
    )
    tick = row["scheduled_for"].astimezone(UTC)
    assert day_of(row["id"]) == tick.replace(hour=0, minute=0, second=0, microsecond=0)
    assert row["partition"] == f"job_runs_{tick:%Y%m%d}"
    assert await store.run_get(pool, "default", row["id"]) is not None


async def test_a_run_is_looked_up_in_the_partition_of_its_day_only(pool: Any) -> None:
    job = await make_job(pool, next_run_at=None, paused=True)
    now = await store.db_now(pool)
    await pool.execute("SELECT history_partitions_create(7, 5)")
    (row,) = await pool.fetch(INSERT_RUNS, job.id, [now - timedelta(days=2)], "succeeded")
    async with pool.acquire() as conn, conn.transaction():
        # The plan the service runs: prepared once, generic, pruned at execution.
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = await conn.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {store.QUERIES['run_get']}", "default", row["id"]
        )
    scanned = [p["Relation Name"] for p in plan_nodes(plan[0]["Plan"]) if "Relation Name" in p]
    assert scanned == [row["partition"]]


async def test_leasing_recording_and_releasing_runs_call_no_day_function_per_run(
    pool: Any,
) -> None:
    """run_ids_day_start/end hold a query, so PostgreSQL cannot inline them: compared
    with row by row, each call was a query of its own, two per run."""
    job = await make_job(pool, next_run_at=None, paused=True)
    now = await store.db_now(pool)
    ticks = [now - timedelta(seconds=s) for s in range(20)]
    ids = [row["id"] for row in await pool.fetch(INSERT_RUNS, job.id, ticks, "pending")]
    done = {"status": "succeeded", "delay_s": None, "error": None, "output": None}
    results = [RunResult(run_id=i, duration_ms=1.0, **done) for i in ids]
    async with pool.acquire() as conn, conn.transaction():
        # The plans the service runs: prepared once, generic.
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute("SET LOCAL track_functions = 'all'")
        leased = await store.runs_exchange(conn, "w", [], 20, 10.0, leases=False)
        recorded = await store.runs_exchange(conn, "w", results, 0, 10.0, leases=False)
        cancelled = await store.runs_cancelled(conn, ids)
        await store.runs_release(conn, "w", ids)
        calls = await conn.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
            " WHERE funcname IN ('run_ids_day_start', 'run_ids_day_end')"
        )
    assert sorted(run.id for run in leased.leased) == sorted(ids)
    assert recorded.recorded == set(ids)
    assert cancelled == set()
    assert calls <= 4, f"{calls} calls for {len(ids)} runs"


async def test_the_days_of_ids_are_reckoned_as_the_schema_reckons_them(pool: Any) -> None:
    day = 1 << 37
    cases = [
        [5],  # from before partitioning: day 0, any time
        [day + 3],  # day 1: 2000-01-02 and every earlier tick
        [9_000 * day + 1],
        [9_000 * day + 1, 9_003 * day + 7, 9_001 * day],
        [3, 9_000 * day],
        [day, 9_000 * day],
    ]
    for ids in cases:
        # Compared in the database: asyncpg reads infinity back as a naive datetime.
        same = await pool.fetchrow(
            "SELECT run_ids_day_start($1::bigint[]) = $2, run_ids_day_end($1::bigint[]) = $3",
            ids,
            *days_of_ids(ids),
        )
        assert tuple(same) == (True, True), ids
    start, end = days_of_ids([])
    assert start > end


async def test_a_run_whose_day_has_no_partition_is_kept_and_moves_when_the_day_is_made(
    pool: Any,
) -> None:
    job = await make_job(pool, next_run_at=None, paused=True)
    now = await store.db_now(pool)
    far = now + timedelta(days=20)
    (row,) = await pool.fetch(INSERT_RUNS, job.id, [far], "succeeded")
    assert row["partition"] == "job_runs_default"
    assert await pool.fetchval("SELECT history_partitions_create(21)") >= 1
    moved = await pool.fetchrow(
        "SELECT tableoid::regclass::text AS partition, * FROM job_runs WHERE id = $1", row["id"]
    )
    assert moved["partition"] == f"job_runs_{far.astimezone(UTC):%Y%m%d}"
    assert moved["scheduled_for"] == far
    assert await pool.fetchval("SELECT count(*) FROM job_runs_default") == 0
    # Creating again makes nothing: every day is there.
    assert await pool.fetchval("SELECT history_partitions_create(21)") == 0


async def test_maintenance_makes_a_week_of_partitions_ahead(pool: Any) -> None:
    today = (await store.db_now(pool)).astimezone(UTC).date()
    await maintenance.maintain_once(pool, retention_days=30)
    names = set(await partitions(pool))
    assert {f"job_runs_{today + timedelta(days=d):%Y%m%d}" for d in range(8)} <= names
    assert "job_runs_default" in names


@pytest.mark.slow
async def test_only_the_holder_of_the_maintenance_lock_drops_partitions(pool: Any) -> None:
    await pool.execute("SELECT history_partitions_create(0, 40)")
    old = f"job_runs_{(await store.db_now(pool)) - timedelta(days=40):%Y%m%d}"
    async with pool.acquire() as other, other.transaction():
        await other.execute("SELECT pg_advisory_xact_lock($1)", maintenance.MAINTENANCE_LOCK_KEY)
        done = await maintenance.maintain_once(pool, retention_days=30)
        assert not done.locked and done.dropped == () and done.created == 0
    assert old in await partitions(pool)
    done = await maintenance.maintain_once(pool, retention_days=30)
    assert old in done.dropped
    assert old not in await partitions(pool)


async def test_a_day_detached_but_not_dropped_is_dropped_by_the_next_pass(pool: Any) -> None:
    """Maintenance detaches a day, commits, then drops it: a replica stopped between the
    two leaves a detached table, which the next pass finds and drops."""
    await pool.execute("SELECT history_partitions_create(0, 40)")
    old = f"job_runs_{(await store.db_now(pool)) - timedelta(days=40):%Y%m%d}"
    await pool.execute(f'ALTER TABLE job_runs DETACH PARTITION "{old}"')
    done = await maintenance.maintain_once(pool, retention_days=30)
    assert old in done.dropped
    assert await pool.fetchval("SELECT to_regclass($1)", old) is None


@pytest.fixture
async def engine(make_settings: Any, pool: Any, http: WebhookClient) -> AsyncIterator[Worker]:
    """A worker on the test database, started; stopped afterwards."""
    # Its own maintenance keeps every day: the tests call maintenance themselves.
    settings: Settings = make_settings(
        role="worker", worker_id="partitions", shutdown_grace_s=1, run_retention_days=36500
    )
    worker = Worker(settings, pool, Deliverer(http, allow_private=True))
    worker.start()
    yield worker
    await worker.stop()


@pytest.mark.slow
async def test_retention_drops_whole_days_while_the_engine_runs_and_keeps_what_it_should(
    pool: Any, engine: Worker
) -> None:
    now = await store.db_now(pool)
    await pool.execute("SELECT history_partitions_create(7, 40)")
    history = await make_job(pool, next_run_at=None, paused=True)
    # A run a day for 40 days, and one from 35 days ago still to be retried tomorrow.
    days = [now - timedelta(days=d) for d in range(1, 41)]
    await pool.fetch(INSERT_RUNS, history.id, days, "succeeded")
    unfinished = await pool.fetchrow(
        "INSERT INTO job_runs (id, job_id, tenant, scheduled_for, next_attempt_at, attempt)"
        " VALUES (run_id($2), $1, 'default', $2, now() + interval '1 day', 3)"
        " RETURNING id, tableoid::regclass::text AS partition",
        history.id,
        now - timedelta(days=35, hours=1),
    )
    kept_day = unfinished["partition"]
    # Meanwhile the engine runs five jobs every second.
    ticking = [
        await make_job(pool, schedule="@every 1s", next_run_at=now + timedelta(seconds=1))
        for _ in range(5)
    ]
    first_tick = now + timedelta(seconds=1)

    async def runs_recorded(seconds: int) -> bool:
        count: int = await pool.fetchval(
            "SELECT count(*) FROM job_runs WHERE job_id = ANY($1) AND status = 'succeeded'"
            " AND scheduled_for <= $2",
            [j.id for j in ticking],
            first_tick + timedelta(seconds=seconds),
        )
        return count == len(ticking) * (seconds + 1)

    await eventually(lambda: runs_recorded(1), 15, "the engine's first ticks")

    async def maintained() -> maintenance.Pass | None:
        try:
            done = await maintenance.maintain_once(pool, retention_days=30)
        except asyncpg.LockNotAvailableError:
            # The detach gave up behind a statement of the engine's, as it is meant to
            # (history_partitions_detach's lock_timeout); the next pass tries again.
            return None
        return done if done.locked else None  # the engine's own pass held the lock

    done = await eventually(maintained, 10, "a maintenance pass with the lock")

    cutoff = now - timedelta(days=30)
    left = await partitions(pool)
    for name, bounds in left.items():
        if bounds is not None and bounds[1] <= cutoff:
            assert name == kept_day, f"{name} ends before the retention and was not dropped"
    assert kept_day in left and kept_day not in done.dropped
    assert len(done.dropped) >= 9
    kept = await pool.fetch(
        "SELECT scheduled_for FROM job_runs WHERE job_id = $1 ORDER BY scheduled_for DESC",
        history.id,
    )
    within = [d for d in days if d >= now - timedelta(days=29)]
    assert [r["scheduled_for"] for r in kept][: len(within)] == within
    assert await store.run_get(pool, "default", unfinished["id"]) is not None
    # The engine lost no tick to the drops: every job ran every second, once.
    await eventually(lambda: runs_recorded(4), 15, "four more seconds of ticks")
    ticks = await pool.fetch(
        "SELECT job_id, scheduled_for, count(*) AS n FROM job_runs WHERE job_id = ANY($1)"
        " AND scheduled_for <= $2 GROUP BY 1, 2",
        [j.id for j in ticking],
        first_tick + timedelta(seconds=4),
    )
    assert len(ticks) == 5 * len(ticking) and all(t["n"] == 1 for t in ticks)


async def test_dropping_a_day_waits_for_no_long_transaction_it_would_block(pool: Any) -> None:
    """A drop locks job_runs whole for a moment. Behind a long statement it gives up
    within its lock_timeout (the next pass tries again) instead of stalling every
    query on job_runs that would queue behind it."""
    await pool.execute("SELECT history_partitions_create(0, 40)")
    async with pool.acquire() as reader, reader.transaction():
        await reader.fetchval("SELECT count(*) FROM job_runs")  # holds its lock to commit
        started = asyncio.get_running_loop().time()
        with pytest.raises(Exception, match="lock timeout"):
            await store.history_partitions_detach(pool, 30, maintenance.MAINTENANCE_LOCK_KEY)
        assert asyncio.get_running_loop().time() - started < 5


# The engine's hottest statements, prepared and run as its sessions run them, with
# literal arguments: nothing due or recorded, no tenant filter, no floor.
ENGINE_STATEMENTS = {
    "jobs_claim_due": "(NULL, 10, NULL, '-infinity')",
    "runs_exchange": "('w', '{}', '{}', '{}', '{}', '{}', '{}', 10, 10, true, '{}', NULL, false,"
    " '-infinity', 'infinity', '-infinity')",
}
# Enough of today's runs for a scan of them to cost: 3,000, finished, in its first hour.
FILL_TODAY = """
INSERT INTO job_runs (id, job_id, tenant, scheduled_for, status, finished_at)
SELECT run_id(t), $1, 'default', t, 'succeeded', t
FROM generate_series(1, 3000) AS i,
     LATERAL (SELECT date_trunc('day', now(), 'UTC') + make_interval(secs => i) AS t) AS tick
"""


async def test_an_engine_plan_made_while_today_was_empty_probes_it_by_index_once_it_fills(
    pool: Any, engine_conn: Any
) -> None:
    """The engine's sessions keep a generic plan until an ANALYZE invalidates it. One
    made while today's partition was analyzed empty scanned that partition once per job
    it probed, and kept doing so as the day filled (db.create_pool: enable_seqscan)."""
    now = await store.db_now(pool)
    job = await make_job(pool, next_run_at=now - timedelta(seconds=1), overlap="forbid")
    await pool.execute("ANALYZE job_runs")
    for name, arguments in ENGINE_STATEMENTS.items():
        await engine_conn.execute(f"PREPARE {name} AS {store.QUERIES[name]}")
        # The plan is made here, while today holds no run, and kept.
        await engine_conn.execute(f"EXPLAIN EXECUTE {name}{arguments}")
    await pool.execute(FILL_TODAY, job.id)
    scanned: dict[str, set[str]] = {}
    for name, arguments in ENGINE_STATEMENTS.items():
        plan = await engine_conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}{arguments}")
        scanned[name] = {
            node["Relation Name"]
            for node in plan_nodes(plan[0]["Plan"])
            if node["Node Type"] == "Seq Scan" and node["Relation Name"].startswith("job_runs_")
        }
    assert scanned == {name: set() for name in ENGINE_STATEMENTS}
