"""Pruning old runs: only finished ones past the retention, by one replica at a time, and
the others read nothing."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler_svc import store
from scheduler_svc.engine import maintenance
from tests.factories import make_job, plan_nodes

INSERT_RUN = """
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, created_at)
SELECT $1, 'default', now() - make_interval(days => $2) + make_interval(secs => i),
       $3, now() - make_interval(days => $2)
FROM generate_series(1, $4) AS i
"""


# Every test here starts from empty tables.
pytestmark = pytest.mark.usefixtures("clean")


async def test_prunes_finished_runs_past_retention_in_batches(pool: Any) -> None:
    job = await make_job(pool, next_run_at=None, paused=True)
    for status in ("succeeded", "failed", "skipped"):
        await pool.execute(INSERT_RUN, job.id, 40, status, 30)
    await pool.execute(INSERT_RUN, job.id, 40, "pending", 5)  # old but not finished
    await pool.execute(INSERT_RUN, job.id, 10, "succeeded", 7)  # finished but recent
    assert await maintenance.prune_once(pool, retention_days=30, batch=7) == 90
    left = await pool.fetch("SELECT status, count(*) FROM job_runs GROUP BY 1 ORDER BY 1")
    assert [tuple(r) for r in left] == [("pending", 5), ("succeeded", 7)]


async def test_only_the_holder_of_the_maintenance_lock_prunes(pool: Any) -> None:
    job = await make_job(pool, next_run_at=None, paused=True)
    await pool.execute(INSERT_RUN, job.id, 40, "succeeded", 3)
    async with pool.acquire() as other, other.transaction():
        await other.execute("SELECT pg_advisory_xact_lock($1)", maintenance.MAINTENANCE_LOCK_KEY)
        assert await maintenance.prune_once(pool, retention_days=30) == 0
    assert await maintenance.prune_once(pool, retention_days=30) == 3


async def test_a_replica_without_the_maintenance_lock_reads_no_run(
    pool: Any, engine_conn: Any
) -> None:
    """Every replica's maintenance asks; the one that is not to prune must not read the
    runs it would have looked through (job_runs_default holds whatever has no day)."""
    job = await make_job(pool, next_run_at=None, paused=True)
    await pool.execute(INSERT_RUN, job.id, 10, "succeeded", 5_000)  # no partition: default
    key = maintenance.MAINTENANCE_LOCK_KEY
    async with pool.acquire() as other, other.transaction():
        await other.execute("SELECT pg_advisory_xact_lock($1)", key)
        # Hash joins, as the planner chose for the bench's 721,000 runs of that day:
        # the delete's side then read every one, though none was doomed.
        await engine_conn.execute("SET enable_nestloop = off")
        await engine_conn.execute(f"PREPARE prune AS {store.QUERIES['runs_prune']}")
        plan = await engine_conn.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE prune(30, 1000, {key})"
        )
    read = [
        (node["Relation Name"], node["Actual Rows"] + node.get("Rows Removed by Filter", 0))
        for node in plan_nodes(plan[0]["Plan"])
        if node.get("Relation Name", "").startswith("job_runs_") and node["Actual Loops"]
    ]
    assert sum(rows for _, rows in read) == 0, read
