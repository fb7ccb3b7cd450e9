"""Upgrade: migration 0005 (run history partitioned) on a database of schema 4 holding
`--runs` runs, while a writer keeps inserting runs as a replica of the previous release
would.

    python -m bench.upgrade [--runs 10000000] [--out PATH]

The database is made as schema 4 made it (migration 0004, the previous release's
schema.sql), loaded with finished runs of 10,000 jobs over 30 days (secondary indexes
dropped for the load and rebuilt by applying 0004 again, then VACUUM ANALYZE). Then the
migration runs step by step, each timed, while a writer inserts one run every
`WRITE_EVERY_S` seconds without an id (the previous release's insert, given its id by
the job_runs_id trigger once job_runs is partitioned): the longest insert says how long
writes were held up, and by which step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Result, bench_database
from scheduler_svc.store import migrate

JOBS = 10_000
DAYS = 30
CHUNK = 1_000_000
WRITE_EVERY_S = 0.005

MAKE_JOBS = """
INSERT INTO jobs (tenant, name, schedule, status, next_run_at)
SELECT 'bench', 'job ' || i, '@every 1m', 'paused', NULL FROM generate_series(1, $1) AS i
"""
# Finished runs, `$3` in all, spread evenly over the last DAYS days, jobs taking turns.
MAKE_RUNS = f"""
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, attempt, started_at,
                      finished_at, duration_ms, worker, created_at)
SELECT j.first + i % {JOBS}, 'bench', t, 'succeeded', 1, t, t, 1.0, 'bench', t
FROM generate_series($1::bigint, $2::bigint - 1) AS i,
     LATERAL (SELECT now() - make_interval(secs => {DAYS} * 86400.0 * (1 - i::float8 / $3))
              AS t) AS tick,
     (SELECT min(id) AS first FROM jobs) AS j
"""
SECONDARY_INDEXES = """
SELECT indexrelid::regclass::text FROM pg_index
WHERE indrelid = 'job_runs'::regclass AND NOT indisprimary
"""
WRITE = """
INSERT INTO job_runs (job_id, tenant, scheduled_for, trigger, status, next_attempt_at)
SELECT min(id), 'bench', clock_timestamp(), 'manual', 'succeeded', NULL FROM jobs
"""


async def load(conn: asyncpg.Connection[Any], runs: int) -> float:
    """Schema 4 and `runs` runs; the seconds it took."""
    started = time.perf_counter()
    base = next(m for m in migrate.MIGRATIONS if m.version == 4).steps[0].sql
    await conn.execute(base)
    await conn.execute(MAKE_JOBS, JOBS)
    for (name,) in await conn.fetch(SECONDARY_INDEXES):
        await conn.execute(f"DROP INDEX {name}")
    for start in range(0, runs, CHUNK):
        await conn.execute(MAKE_RUNS, start, min(start + CHUNK, runs), runs)
    await conn.execute("SET maintenance_work_mem = '512MB'")
    await conn.execute(base)  # builds the indexes again
    await conn.execute("VACUUM ANALYZE job_runs")
    return time.perf_counter() - started


async def writer(url: str, stop: asyncio.Event, stalls: list[tuple[float, float]]) -> int:
    """Insert a run every WRITE_EVERY_S until `stop`; record (start, seconds) of each."""
    conn = await asyncpg.connect(url)
    written = 0
    try:
        while not stop.is_set():
            started = time.perf_counter()
            await conn.execute(WRITE)
            stalls.append((started, time.perf_counter() - started))
            written += 1
            await asyncio.sleep(WRITE_EVERY_S)
    finally:
        await conn.close()
    return written


async def measure(runs: int) -> dict[str, Any]:
    async with bench_database(with_schema=False) as url:
        conn = await asyncpg.connect(url)
        try:
            load_s = await load(conn, runs)
            stop, stalls = asyncio.Event(), list[tuple[float, float]]()
            writing = asyncio.create_task(writer(url, stop, stalls))
            await asyncio.sleep(1)
            (migration,) = [m for m in migrate.MIGRATIONS if m.version == 5]
            steps = []
            for step in migration.steps:
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.execute(step.sql)
                ended = time.perf_counter()
                during = [s for at, s in stalls if started <= at < ended] or [0.0]
                steps.append(
                    {
                        "step": step.description,
                        "seconds": ended - started,
                        "longest_insert_s": max(during),
                    }
                )
            await asyncio.sleep(1)
            stop.set()
            written = await writing
            kept = await conn.fetchval("SELECT count(*) FROM job_runs")
        finally:
            await conn.close()
    return {"runs": runs, "load_s": load_s, "steps": steps, "written": written, "kept": kept}


def result(figures: dict[str, Any]) -> Result:
    rows: list[list[object]] = [
        [s["step"], f"{s['seconds']:.2f}", f"{s['longest_insert_s'] * 1000:.0f}"]
        for s in figures["steps"]
    ]
    total = sum(s["seconds"] for s in figures["steps"])
    rows.append(["total", f"{total:.2f}", ""])
    title = (
        f"Migration 0005 on {figures['runs']:,} runs (loaded in {figures['load_s']:.0f} s);"
        f" {figures['written']:,} inserts meanwhile, {figures['kept']:,} runs after"
    )
    return Result(title, ["step", "seconds", "longest insert meanwhile (ms)"], rows, figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    measured = result(asyncio.run(measure(args.runs)))
    print(measured.table())
    if args.out:
        args.out.write_text(json.dumps(measured.figures, indent=2, default=str))


if __name__ == "__main__":
    main()
