"""Memory: resident set of one replica, idle and at 1,000 ticks/s.

    python -m bench.memory [--jobs 1000] [--seconds 30]

One `scheduler-svc serve` (role `all`: API, scheduler and executors) runs on a fresh
database holding `--jobs` paused `@every 1s` jobs (log target) and a history of
runs. Idle: VmRSS from /proc/<pid>/status once it has been ready for IDLE_S.
Loaded: the jobs are started with spread phases (a steady `--jobs` ticks/s); VmRSS
is sampled every second for `--seconds`, and VmHWM (the peak) read at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Result, bench_database, memory_kib, replicas
from bench.firelag import prepare, start

IDLE_S = 5.0
SCHEDULE = "@every 1s"
DONE = """
SELECT count(*) FROM job_runs
WHERE scheduled_for >= $1 AND scheduled_for < $1 + make_interval(secs => $2)
  AND status = 'succeeded'
"""


async def measure(jobs: int, seconds: float) -> dict[str, Any]:
    """Idle and loaded memory of one replica, in KiB, and the tick rate it kept up."""
    async with bench_database() as url:
        await prepare(url, jobs, SCHEDULE, {"type": "log"})
        with (
            tempfile.TemporaryDirectory() as logs,
            replicas(url, 1, Path(logs), role="all") as (replica,),
        ):
            await asyncio.sleep(IDLE_S)
            idle = memory_kib(replica.pid)
            conn = await asyncpg.connect(url)
            try:
                first = await start(conn, jobs, SCHEDULE, "spread")
                now = await conn.fetchval("SELECT now()")
                await asyncio.sleep((first - now).total_seconds())
                samples = []
                for _ in range(int(seconds)):
                    await asyncio.sleep(1)
                    samples.append(memory_kib(replica.pid)["VmRSS"])
                loaded = memory_kib(replica.pid)
                done = await conn.fetchval(DONE, first, float(int(seconds) - 1))
            finally:
                await conn.close()
    return {
        "jobs": jobs,
        "seconds": seconds,
        "idle_rss_kib": idle["VmRSS"],
        "loaded_rss_kib": loaded["VmRSS"],
        "loaded_rss_max_sampled_kib": max(samples),
        "peak_hwm_kib": loaded["VmHWM"],
        "ticks_per_s": done / (int(seconds) - 1),
        "rss_samples_kib": samples,
    }


def result(f: dict[str, Any]) -> Result:
    mib = 1024
    rss, rss_max = f["loaded_rss_kib"] / mib, f["loaded_rss_max_sampled_kib"] / mib
    return Result(
        "Memory of one replica (role all), MiB",
        ["state", "VmRSS", "VmHWM (peak)", "ticks/s kept"],
        [
            ["idle", f"{f['idle_rss_kib'] / mib:.1f}", "-", "-"],
            [
                f"{f['jobs']} jobs @every 1s, after {f['seconds']:g} s",
                f"{rss:.1f} (max sampled {rss_max:.1f})",
                f"{f['peak_hwm_kib'] / mib:.1f}",
                f"{f['ticks_per_s']:,.0f}",
            ],
        ],
        f,
    )


async def run(quick: bool) -> list[Result]:
    """Idle, then 1,000 ticks/s for 30 s (10 s with quick)."""
    return [result(await measure(1000, 10 if quick else 30))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    print(result(await measure(args.jobs, args.seconds)).table())


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
