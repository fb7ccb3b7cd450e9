"""Fire lag: how late runs start (and webhooks arrive) after their tick.

    python -m bench.firelag [--jobs 200 1000 5000] [--seconds 60] [--replicas 2]
                            [--schedule "@every 1s"] [--target log|http] [--phase spread|aligned]
                            [--concurrency N]

Replicas run as real `scheduler-svc serve --role worker` processes on a fresh
database holding the jobs and a history of earlier runs (vacuumed and analyzed, as
a running system's tables are). The jobs are started while the replicas run; after
a warm-up of 3 s, every run whose tick falls in the next `--seconds` counts:

- start - tick: started_at - scheduled_for, from the runs table (database clock);
- receipt - tick (`--target http`): when the request had fully arrived at a small
  receiver in this process on 127.0.0.1, minus the tick in its body (same machine,
  same clock). The replicas get SCHEDULER_WEBHOOK_ALLOW_PRIVATE=true for it.

`--phase spread` (default) gives `@every` jobs evenly spread sub-second phases, as
jobs created over time have, so N jobs on `@every 1s` are a steady N ticks/s;
`aligned` starts them all on the same second, a burst of N each second. A cron
schedule is aligned by nature: `*/5 * * * * *` (six fields, seconds first) fires
every job on each fifth second.

`--concurrency` sets SCHEDULER_CONCURRENCY on the replicas (default: the service's,
32). Attempts under way per replica are its rate times how long one takes, so at
2,500 webhook calls/s per replica and some 20 ms a call, 32 slots are the limit,
not the CPU: the full run gives the 5,000-job webhook rows 128.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from bench.common import Result, autovacuum_stand_in, bench_database, ms, replicas, spread
from bench.receiver import Receipts, receiving
from scheduler_svc import schedule as schedules
from scheduler_svc.config import Settings

MAKE_JOBS = """
INSERT INTO jobs (tenant, name, schedule, target, status, next_run_at)
SELECT 'bench', 'job-' || i, $2, $3::jsonb, 'paused', NULL
FROM generate_series(1, $1) AS i
"""
# $1: the first tick; $2: spread the jobs' phases over this many seconds; jobs $4 to
# $4 + $3 - 1 (by id).
START_JOBS = """
UPDATE jobs
SET status = 'active',
    next_run_at = $1::timestamptz + make_interval(secs => (id % $3)::float8 * $2::float8 / $3)
WHERE id BETWEEN $4 AND $4 + $3 - 1
"""
# Earlier runs: a running system has a history, and statistics that know it (on a
# brand-new database, plans made for empty tables hold until autovacuum's first
# ANALYZE, up to a minute). $2 seconds of one run per second per job.
MAKE_HISTORY = """
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, attempt, started_at,
                      finished_at, created_at)
SELECT j, 'bench', t, 'succeeded', 1, t, t, t
FROM generate_series(1, $1) AS j,
     generate_series(now() - interval '1 day',
                     now() - interval '1 day' + make_interval(secs => $2::int), interval '1 second')
         AS t
"""
# At most this many history rows, whatever the number of jobs.
HISTORY_ROWS = 720_000
LAGS = """
SELECT (extract(epoch FROM started_at - scheduled_for) * 1000)::float8 AS lag_ms, status, worker
FROM job_runs
WHERE job_id BETWEEN $3 AND $4 AND scheduled_for >= $1 AND scheduled_for < $2
"""
WARM_UP_S = 3
LEAD_S = 2
DEFAULT_CONCURRENCY = Settings().concurrency


@contextlib.asynccontextmanager
async def _maybe_receiving(target: str) -> AsyncIterator[tuple[str | None, Receipts | None]]:
    if target != "http":
        yield None, None
        return
    async with receiving() as (url, receipts):
        yield url, receipts


async def prepare(url: str, jobs: int, schedule: str, target: dict[str, Any]) -> None:
    """Create `jobs` paused jobs and a bounded history of runs; vacuum and analyze."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(MAKE_JOBS, jobs, schedule, json.dumps(target))
        await conn.execute(MAKE_HISTORY, jobs, max(60, HISTORY_ROWS // jobs))
        await conn.execute("VACUUM ANALYZE jobs, job_runs")
    finally:
        await conn.close()


async def start(
    conn: asyncpg.Connection[Any], jobs: int, schedule: str, phase: str, first_job: int = 1
) -> datetime:
    """Activate jobs `first_job` to `first_job + jobs - 1` from their first fire time a
    moment ahead; return that time."""
    parsed = schedules.parse(schedule)
    now: datetime = await conn.fetchval("SELECT now()")
    first = schedules.next_fire(
        parsed, ZoneInfo("UTC"), now.replace(microsecond=0) + timedelta(seconds=LEAD_S)
    )
    assert first is not None
    span = parsed.every.total_seconds() if phase == "spread" and parsed.every else 0.0
    await conn.execute(START_JOBS, first, span, jobs, first_job)
    return first


async def measure(
    jobs: int,
    seconds: float,
    replica_count: int,
    schedule: str,
    target: str = "log",
    phase: str = "spread",
    concurrency: int | None = None,
) -> dict[str, Any]:
    """Run the jobs for `seconds` after a warm-up; the lags of the runs in that window."""
    async with bench_database() as url, _maybe_receiving(target) as (hook, receipts):
        spec: dict[str, Any] = {"type": "log"} if hook is None else {"type": "http", "url": hook}
        await prepare(url, jobs, schedule, spec)
        return await measure_on(
            url, jobs, seconds, replica_count, schedule, target, phase, concurrency, receipts
        )


async def measure_on(
    url: str,
    jobs: int,
    seconds: float,
    replica_count: int,
    schedule: str,
    target: str = "log",
    phase: str = "spread",
    concurrency: int | None = None,
    receipts: Receipts | None = None,
    first_job: int = 1,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """measure() on a database that has the jobs already, paused, on `schedule`: jobs
    `first_job` to `first_job + jobs - 1` (by id), whatever else it holds. `env` goes
    to the replicas too."""
    environ = {"SCHEDULER_WEBHOOK_ALLOW_PRIVATE": "true", **(env or {})}
    if concurrency is not None:
        environ["SCHEDULER_CONCURRENCY"] = str(concurrency)
    last_job = first_job + jobs - 1
    with tempfile.TemporaryDirectory() as logs, replicas(url, replica_count, Path(logs), **environ):
        async with autovacuum_stand_in(url) as vacuumed:
            conn = await asyncpg.connect(url)
            try:
                first = await start(conn, jobs, schedule, phase, first_job)
                window_start = first + timedelta(seconds=WARM_UP_S)
                window_end = window_start + timedelta(seconds=seconds)
                # Until the window is over, and a little more for its last runs.
                now = await conn.fetchval("SELECT now()")
                await asyncio.sleep((window_end - now).total_seconds() + 2)
                rows = await conn.fetch(LAGS, window_start, window_end, first_job, last_job)
            finally:
                await conn.close()
    lags = [r["lag_ms"] for r in rows if r["lag_ms"] is not None]
    figures: dict[str, Any] = {
        "jobs": jobs,
        "seconds": seconds,
        "replicas": replica_count,
        "concurrency": concurrency or DEFAULT_CONCURRENCY,
        "schedule": schedule,
        "target": target,
        "phase": phase if schedules.parse(schedule).kind == "every" else "aligned",
        "runs": len(rows),
        # Skipped: a tick that came due while the job's previous run had not finished
        # (overlap forbid, the default) is recorded as skipped and never starts.
        "skipped": sum(1 for r in rows if r["status"] == "skipped"),
        "not_started": sum(1 for r in rows if r["lag_ms"] is None and r["status"] != "skipped"),
        "not_succeeded": sum(1 for r in rows if r["status"] != "succeeded"),
        "workers": len({r["worker"] for r in rows if r["worker"]}),
        "start_lag_ms": spread(lags),
        # The server's autovacuum was off and the bench vacuumed the queue tables itself.
        "vacuum_stand_in": vacuumed,
    }
    if receipts is not None:
        figures["receipt_lag_ms"] = spread(receipts.lags_ms(window_start, window_end))
    return figures


HEADER = [
    "jobs",
    "schedule",
    "target",
    "phase",
    "repl.",
    "conc.",
    "runs",
    "skipped",
    "not started",
    "start p50",
    "p99",
    "max",
    "receipts",
    "receipt p50",
    "p99",
    "max",
]


def row(f: dict[str, Any]) -> list[object]:
    """A table row of one measure()."""
    start, receipt = f["start_lag_ms"], f.get("receipt_lag_ms")
    tail: list[object] = (
        [receipt["count"], ms(receipt["p50"]), ms(receipt["p99"]), ms(receipt["max"])]
        if receipt
        else ["-", "-", "-", "-"]
    )
    return [
        f["jobs"],
        f["schedule"],
        f["target"],
        f["phase"],
        f["replicas"],
        f["concurrency"],
        f["runs"],
        f["skipped"],
        f["not_started"],
        ms(start["p50"]),
        ms(start["p99"]),
        ms(start["max"]),
        *tail,
    ]


def title(seconds: float, measured: list[dict[str, Any]] | None = None) -> str:
    text = f"Fire lag in ms over {seconds:g} s: start - tick (runs table), receipt - tick (webhook)"
    if any(f.get("vacuum_stand_in") for f in measured or []):
        text += "\n(the server's autovacuum is off: the bench vacuumed jobs and job_runs every 5 s)"
    return text


async def run(quick: bool) -> list[Result]:
    """2 replicas, 200, 1,000, 5,000 jobs: @every 1s on log and http targets, */5 s cron on http."""
    sizes = [200, 1000] if quick else [200, 1000, 5000]
    seconds = 10.0 if quick else 60.0
    measured = []
    for schedule, target in (
        ("@every 1s", "log"),
        ("@every 1s", "http"),
        ("*/5 * * * * *", "http"),
    ):
        for jobs in sizes:
            concurrency = 128 if target == "http" and jobs >= 5000 else None
            measured.append(
                await measure(jobs, seconds, 2, schedule, target, "spread", concurrency)
            )
    return [
        Result(title(seconds, measured), HEADER, [row(f) for f in measured], {"runs": measured})
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, nargs="+", default=[200])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--schedule", default="@every 1s")
    parser.add_argument("--target", choices=["log", "http"], default="log")
    parser.add_argument("--phase", choices=["spread", "aligned"], default="spread")
    parser.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args()
    measured = [
        await measure(
            jobs,
            args.seconds,
            args.replicas,
            args.schedule,
            args.target,
            args.phase,
            args.concurrency,
        )
        for jobs in args.jobs
    ]
    print(Result(title(args.seconds, measured), HEADER, [row(f) for f in measured]).table())


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
