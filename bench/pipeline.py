"""Pipeline throughput: N due ticks through materialize → claim → log target → record.

    python -m bench.pipeline [--ticks 50000] [--replicas 1 2]

Replicas run as real `scheduler-svc serve --role worker` processes on a fresh
database. Once they are up, one statement makes N jobs due at once; the clock runs
from that commit until the last run is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.common import bench_database, replicas, table

MAKE_DUE = """
INSERT INTO jobs (tenant, name, schedule, next_run_at, misfire_grace_s, overlap)
SELECT 'bench', 'job-' || i, '@every 1h', now(), 3600, 'allow'
FROM generate_series(1, $1) AS i
"""
# Cheap enough to ask every few milliseconds (partial indexes), unlike a count(*).
BUSY = """
SELECT EXISTS (SELECT FROM jobs WHERE status = 'active' AND next_run_at <= now())
    OR EXISTS (SELECT FROM job_runs WHERE status IN ('pending', 'running'))
"""
SPAN = "SELECT extract(epoch FROM max(finished_at) - $1::timestamptz) FROM job_runs"


async def measure(ticks: int, replica_count: int, timeout_s: float) -> dict[str, float]:
    async with bench_database() as url:
        with tempfile.TemporaryDirectory() as logs, replicas(url, replica_count, Path(logs)):
            conn = await asyncpg.connect(url)
            try:
                started = await conn.fetchval("SELECT now()")
                await conn.execute(MAKE_DUE, ticks)
                deadline = time.monotonic() + timeout_s
                while await conn.fetchval(BUSY):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the {ticks} ticks were not all run in time")
                    await asyncio.sleep(0.02)
                seconds = await conn.fetchval(SPAN, started)
                failed = await conn.fetchval(
                    "SELECT count(*) FROM job_runs WHERE status <> 'succeeded'"
                )
                runs = await conn.fetchval("SELECT count(*) FROM job_runs")
            finally:
                await conn.close()
    return {"seconds": seconds, "rate": ticks / seconds, "failed": failed, "runs": runs}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=50_000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    rows = []
    for count in args.replicas:
        result = await measure(args.ticks, count, args.timeout)
        rows.append(
            [
                count,
                args.ticks,
                f"{result['seconds']:.2f}",
                f"{result['rate']:,.0f}",
                int(result["runs"]),
                int(result["failed"]),
            ]
        )
    print(
        table(
            "Pipeline throughput (materialize → claim → log target → record)",
            ["replicas", "ticks", "seconds", "ticks/s", "runs", "not succeeded"],
            rows,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
