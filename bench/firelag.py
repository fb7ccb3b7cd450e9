"""Fire lag: how late runs start after their tick, with jobs firing every second.

    python -m bench.firelag [--jobs 200] [--seconds 60] [--replicas 2] [--schedule "@every 1s"]

Replicas run as real `scheduler-svc serve --role worker` processes on a fresh
database; the jobs (log target) are created while they run, and the lag of every
run whose tick falls in the window (after a warm-up of 3 s) is read from the runs
table: started_at minus scheduled_for.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import asyncpg

from bench.common import bench_database, percentile, replicas, table

MAKE_JOBS = """
INSERT INTO jobs (tenant, name, schedule, status, next_run_at)
SELECT 'bench', 'job-' || i, $2, 'paused', NULL
FROM generate_series(1, $1) AS i
"""
START_JOBS = """
UPDATE jobs SET status = 'active', next_run_at = date_trunc('second', now()) + interval '2 seconds'
"""
# An hour of yesterday's runs: a running system has a history, and statistics that
# know it (on a brand-new database, plans made for empty tables hold until
# autovacuum's first ANALYZE, up to a minute).
MAKE_HISTORY = """
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, attempt, started_at,
                      finished_at, created_at)
SELECT j, 'bench', t, 'succeeded', 1, t, t, t
FROM generate_series(1, $1) AS j,
     generate_series(now() - interval '1 day', now() - interval '23 hours', interval '1 second')
         AS t
"""
LAGS = """
SELECT extract(epoch FROM started_at - scheduled_for) * 1000 AS lag_ms, status, worker
FROM job_runs
WHERE scheduled_for >= $1 AND scheduled_for < $2
"""


async def measure(jobs: int, seconds: float, replica_count: int, schedule: str) -> dict[str, float]:
    async with bench_database() as url:
        conn = await asyncpg.connect(url)
        await conn.execute(MAKE_JOBS, jobs, schedule)
        await conn.execute(MAKE_HISTORY, jobs)
        await conn.execute("VACUUM ANALYZE jobs, job_runs")
        await conn.close()
        with tempfile.TemporaryDirectory() as logs, replicas(url, replica_count, Path(logs)):
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(START_JOBS)
                start = await conn.fetchval("SELECT now() + interval '3 seconds'")
                await asyncio.sleep(3 + seconds + 1)
                end = await conn.fetchval(
                    "SELECT $1::timestamptz + make_interval(secs => $2)", start, seconds
                )
                rows = await conn.fetch(LAGS, start, end)
            finally:
                await conn.close()
    lags = [r["lag_ms"] for r in rows if r["lag_ms"] is not None]
    return {
        "runs": len(rows),
        "not_started": sum(1 for r in rows if r["lag_ms"] is None),
        "p50": percentile(lags, 50),
        "p99": percentile(lags, 99),
        "max": max(lags, default=float("nan")),
        "workers": len({r["worker"] for r in rows}),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, nargs="+", default=[200])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--schedule", default="@every 1s")
    args = parser.parse_args()
    rows = []
    for jobs in args.jobs:
        r = await measure(jobs, args.seconds, args.replicas, args.schedule)
        rows.append(
            [
                jobs,
                args.schedule,
                args.replicas,
                int(r["runs"]),
                int(r["not_started"]),
                f"{r['p50']:.1f}",
                f"{r['p99']:.1f}",
                f"{r['max']:.1f}",
                int(r["workers"]),
            ]
        )
    print(
        table(
            f"Fire lag, started_at - scheduled_for, over {args.seconds:g} s (log target)",
            [
                "jobs",
                "schedule",
                "replicas",
                "runs",
                "not started",
                "p50 ms",
                "p99 ms",
                "max ms",
                "workers",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
