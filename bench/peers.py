"""Peers on the same machine and server: pgqueuer, and the raw asyncpg ceiling.

    python -m bench.peers [--ticks 50000] [--schedules 1000] [--seconds 60]

- pgqueuer drain: `--ticks` no-op jobs enqueued beforehand, then one QueueManager
  (one process, this one) drains them, at batch 100 and at its default batch (10).
- pgqueuer cron: `--schedules` SchedulerManager schedules firing every 5 s for
  `--seconds`; lateness is the moment the function is called minus the 5-second
  boundary it fires for.
- raw ceiling: one process, asyncpg + uvloop, no framework. One CTE statement claims
  100 due jobs of our own `jobs` table FOR UPDATE SKIP LOCKED, advances their
  next_run_at and inserts a (finished) run each into `job_runs`; 4 tasks run it in
  a loop until `--ticks` due jobs are done. It is the least any scheduler on this
  schema must do per tick, so no scheduler on it can go faster.

pgqueuer comes from the `bench` extra (`pip install -e '.[bench]'`); without it those
rows say so and the raw ceiling still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg

from bench.common import Result, bench_database, ms, spread

# Jobs of our own schema, all due now; the raw claim advances them an hour.
MAKE_DUE_JOBS = """
INSERT INTO jobs (tenant, name, schedule, next_run_at, misfire_grace_s, overlap)
SELECT 'bench', 'job-' || i, '@every 1h', now() - interval '1 second', 3600, 'allow'
FROM generate_series(1, $1) AS i
"""
# Claim, advance and record in one statement: the floor of a tick's database work.
RAW_CLAIM = """
WITH due AS (
    -- The scheduler's claim: due active jobs, oldest first, none another task holds.
    SELECT id, tenant, next_run_at FROM jobs
    WHERE status = 'active' AND next_run_at <= now()
    ORDER BY next_run_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), advanced AS (
    -- Their next tick.
    UPDATE jobs j SET next_run_at = d.next_run_at + interval '1 hour'
    FROM due d WHERE j.id = d.id
), recorded AS (
    -- One run per tick, recorded as done: the target is a no-op.
    INSERT INTO job_runs (job_id, tenant, scheduled_for, status, attempt, started_at,
                          finished_at)
    SELECT id, tenant, next_run_at, 'succeeded', 1, now(), now() FROM due
    RETURNING 1
)
SELECT count(*) FROM recorded
"""
RAW_TASKS = 4
RAW_BATCH = 100
PGQ_DEFAULT_BATCH = 10  # QueueManager.run's and `pgq run`'s default batch_size
CRON_EVERY_S = 5


def _have_pgqueuer() -> bool:
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        return False
    return True


def _pgqueuer_version() -> str:
    from importlib.metadata import version

    return version("pgqueuer")


async def raw_ceiling(ticks: int, timeout_s: float) -> dict[str, float]:
    """Ticks/s of RAW_TASKS tasks running RAW_CLAIM until `ticks` due jobs are done."""
    async with bench_database() as url:
        conn = await asyncpg.connect(url)
        await conn.execute(MAKE_DUE_JOBS, ticks)
        await conn.execute("VACUUM ANALYZE jobs, job_runs")
        await conn.close()
        pool = await asyncpg.create_pool(url, min_size=RAW_TASKS, max_size=RAW_TASKS)
        done = 0

        async def claim_loop() -> None:
            nonlocal done
            async with pool.acquire() as conn:
                statement = await conn.prepare(RAW_CLAIM)
                while True:
                    claimed = await statement.fetchval(RAW_BATCH)
                    if not claimed:
                        return
                    done += claimed

        try:
            started = time.perf_counter()
            async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
                for _ in range(RAW_TASKS):
                    group.create_task(claim_loop())
            seconds = time.perf_counter() - started
        finally:
            await pool.close()
    return {"ticks": done, "seconds": seconds, "rate": done / seconds}


async def pgqueuer_drain(jobs: int, batch: int, timeout_s: float) -> dict[str, float]:
    """Jobs/s of one pgqueuer QueueManager draining `jobs` no-op jobs at `batch`."""
    from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    async with bench_database() as url:
        conn = await asyncpg.connect(url)
        try:
            queries = Queries(AsyncpgDriver(conn))
            await queries.install()
            for start in range(0, jobs, 10_000):
                size = min(10_000, jobs - start)
                await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
            await conn.execute("VACUUM ANALYZE")
            qm = QueueManager(Queries(AsyncpgDriver(conn)))
            done = 0

            @qm.entrypoint("noop")
            async def noop(job: Job) -> None:
                nonlocal done
                done += 1

            started = time.perf_counter()
            async with asyncio.timeout(timeout_s):
                await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
            seconds = time.perf_counter() - started
            left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        finally:
            await conn.close()
    return {"jobs": done, "seconds": seconds, "rate": done / seconds, "left": left}


async def pgqueuer_cron(schedules: int, seconds: float, timeout_s: float) -> dict[str, float]:
    """Lateness of `schedules` pgqueuer cron schedules firing every CRON_EVERY_S seconds."""
    from pgqueuer import AsyncpgDriver, Queries, SchedulerManager
    from pgqueuer.models import Schedule

    lateness: list[float] = []
    async with bench_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await Queries(AsyncpgDriver(conn)).install()
            sm = SchedulerManager(Queries(AsyncpgDriver(conn)))
            # croniter, which pgqueuer uses, reads a sixth field as seconds at the end.
            expression = f"* * * * * */{CRON_EVERY_S}"
            warm_until = time.time() + CRON_EVERY_S

            def register(index: int) -> None:
                @sm.schedule(f"cron_{index}", expression)
                async def fired(schedule: Schedule) -> None:
                    now = time.time()
                    if now >= warm_until:
                        # The boundary this firing is for: the last one at or before now.
                        lateness.append((now % CRON_EVERY_S) * 1000)

            for index in range(schedules):
                register(index)

            async def stop_later() -> None:
                await asyncio.sleep(seconds + CRON_EVERY_S)
                sm.shutdown.set()

            stopper = asyncio.create_task(stop_later())
            async with asyncio.timeout(timeout_s):
                await sm.run()
            await stopper
        finally:
            await conn.close()
    return {"schedules": schedules, "seconds": seconds, **spread(lateness)}


async def run(quick: bool) -> list[Result]:
    """The peers' figures: pgqueuer drain at batch 100 and default, pgqueuer cron, raw."""
    ticks = 10_000 if quick else 50_000
    cron_seconds = 15.0 if quick else 60.0
    return await measure(ticks, 1000, cron_seconds)


async def measure(ticks: int, schedules: int, cron_seconds: float) -> list[Result]:
    figures: dict[str, Any] = {"ticks": ticks}
    rows: list[list[object]] = []
    raw = await raw_ceiling(ticks, timeout_s=300)
    figures["raw_ceiling"] = raw
    rows.append(
        [
            f"raw asyncpg ceiling ({RAW_TASKS} tasks x {RAW_BATCH}, one CTE)",
            ticks,
            f"{raw['seconds']:.2f}",
            f"{raw['rate']:,.0f}",
        ]
    )
    cron_rows: list[list[object]] = []
    if _have_pgqueuer():
        figures["pgqueuer_version"] = _pgqueuer_version()
        for batch in (100, PGQ_DEFAULT_BATCH):
            drain = await pgqueuer_drain(ticks, batch, timeout_s=600)
            figures[f"pgqueuer_drain_batch_{batch}"] = drain
            rows.append(
                [
                    f"pgqueuer {figures['pgqueuer_version']} drain, batch {batch}",
                    int(drain["jobs"]),
                    f"{drain['seconds']:.2f}",
                    f"{drain['rate']:,.0f}",
                ]
            )
        cron = await pgqueuer_cron(schedules, cron_seconds, timeout_s=cron_seconds + 120)
        figures["pgqueuer_cron"] = cron
        cron_rows.append(
            [
                schedules,
                f"every {CRON_EVERY_S} s",
                f"{cron_seconds:g}",
                int(cron["count"]),
                ms(cron["p50"]),
                ms(cron["p99"]),
                ms(cron["max"]),
            ]
        )
    else:
        figures["pgqueuer_version"] = None
        rows.append(["pgqueuer: not installed (pip install -e '.[bench]')", "-", "-", "-"])
    results = [
        Result(
            "Peers: throughput on this machine (ticks or jobs through to done)",
            ["what", "ticks", "seconds", "per s"],
            rows,
            figures,
        )
    ]
    if cron_rows:
        results.append(
            Result(
                "Peers: pgqueuer cron lateness (call time minus the 5 s boundary)",
                ["schedules", "schedule", "seconds", "firings", "p50 ms", "p99 ms", "max ms"],
                cron_rows,
                {"pgqueuer_cron": figures["pgqueuer_cron"]},
            )
        )
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=50_000)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    for result in await measure(args.ticks, args.schedules, args.seconds):
        print(result.table(), end="\n\n")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
