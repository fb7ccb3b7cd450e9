"""Pipeline throughput: N due ticks through materialize → claim → log target → record.

    python -m bench.pipeline [--ticks 50000] [--replicas 1 2]

Replicas run as real `scheduler-svc serve --role worker` processes on a fresh
database holding N jobs, all due at the same second a few seconds ahead, and three
earlier runs of each, vacuumed and analyzed, as a running system's tables are. The
clock runs from that second until the last run is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.common import Result, bench_database, replicas

MAKE_JOBS = """
INSERT INTO jobs (tenant, name, schedule, next_run_at, misfire_grace_s, overlap)
SELECT 'bench', 'job-' || i, '@every 1h', $2, 3600, 'allow'
FROM generate_series(1, $1) AS i
"""
# Yesterday's runs: a running system has a history, and statistics that know it.
MAKE_HISTORY = """
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, attempt, started_at,
                      finished_at, created_at)
SELECT j.id, j.tenant, now() - make_interval(hours => h), 'succeeded', 1,
       now() - make_interval(hours => h), now() - make_interval(hours => h),
       now() - make_interval(hours => h)
FROM jobs j, generate_series(1, 3) AS h
"""
# Long enough ahead for the history and VACUUM ANALYZE to be done by then.
LEAD_S = 10
DONE = "SELECT count(*) FROM job_runs WHERE created_at >= $1 AND status = 'succeeded'"
FAILED = "SELECT count(*) FROM job_runs WHERE created_at >= $1 AND status <> 'succeeded'"
SPAN = """
SELECT extract(epoch FROM max(finished_at) - $1::timestamptz)::float8 FROM job_runs
WHERE created_at >= $1
"""


async def measure(ticks: int, replica_count: int, timeout_s: float) -> dict[str, float]:
    async with bench_database() as url:
        with tempfile.TemporaryDirectory() as logs, replicas(url, replica_count, Path(logs)):
            conn = await asyncpg.connect(url)
            try:
                started = await conn.fetchval(
                    "SELECT date_trunc('second', now()) + make_interval(secs => $1)", LEAD_S
                )
                await conn.execute(MAKE_JOBS, ticks, started)
                await conn.execute(MAKE_HISTORY)
                await conn.execute("VACUUM ANALYZE jobs, job_runs")
                ready = await conn.fetchval("SELECT now() < $1", started)
                if not ready:
                    raise RuntimeError("setting up took longer than LEAD_S; raise it")
                await asyncio.sleep((started - await conn.fetchval("SELECT now()")).total_seconds())
                deadline = time.monotonic() + timeout_s
                # Asked seldom: the figure comes from the runs' own timestamps, and
                # the count must not load the database it measures.
                while await conn.fetchval(DONE, started) < ticks:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the {ticks} ticks were not all run in time")
                    await asyncio.sleep(0.5)
                seconds = await conn.fetchval(SPAN, started)
                failed = await conn.fetchval(
                    FAILED,
                    started,
                )
                runs = await conn.fetchval(
                    "SELECT count(*) FROM job_runs WHERE created_at >= $1", started
                )
            finally:
                await conn.close()
    return {"seconds": seconds, "rate": ticks / seconds, "failed": failed, "runs": runs}


TITLE = "Pipeline throughput (materialize → claim → log target → record)"
HEADER = ["replicas", "ticks", "seconds", "ticks/s", "runs", "not succeeded"]


async def results(ticks: int, replica_counts: list[int], timeout_s: float) -> Result:
    """One row per replica count."""
    rows: list[list[object]] = []
    figures: dict[str, object] = {"ticks": ticks}
    for count in replica_counts:
        result = await measure(ticks, count, timeout_s)
        figures[f"replicas_{count}"] = result
        rows.append(
            [
                count,
                ticks,
                f"{result['seconds']:.2f}",
                f"{result['rate']:,.0f}",
                int(result["runs"]),
                int(result["failed"]),
            ]
        )
    return Result(TITLE, HEADER, rows, figures)


async def run(quick: bool) -> list[Result]:
    """50,000 ticks (10,000 with quick) through 1 and 2 replicas."""
    return [await results(10_000 if quick else 50_000, [1, 2], timeout_s=300)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=50_000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    print((await results(args.ticks, args.replicas, args.timeout)).table())


if __name__ == "__main__":
    asyncio.run(main())
