"""Fire lag: how late runs start (and webhooks arrive) after their tick.

    python -m bench.firelag [--jobs 200 1000 5000] [--seconds 60] [--replicas 2]
                            [--schedule "@every 1s"] [--target log|http] [--phase spread|aligned]
                            [--concurrency N] [--slice-s S]

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

`--slice-s S` also gives the start p99 of each S seconds of the window, to tell a tail
spread over the window from one that comes in bursts.

`--consoles N` keeps N operator consoles open on the overview meanwhile: one more
replica (`serve --role api`) on the same database, an API key of the jobs' tenant
(stored in the database; the workers do not ask for keys), and N simulated browsers
in this process, each with the live stream `GET /ui/events` open and, on every
`change` event, a `GET /ui` with `HX-Request: true` (the overview's live fragment), as
console.js does: never two of one console at once, and an event that comes while one
is under way asks for one more after it. Every row also gives PostgreSQL's
transactions/s in the window (`pg_stat_database` xact_commit + xact_rollback of the
database: an autocommit statement is one transaction, so this counts statements,
except those that share an explicit transaction). With consoles, the bound is what
their reads may add: fragments fetched per second times the transactions of one
fragment, counted beforehand on the idle database. A session that LISTENs counts a
transaction of its own each time it reads the notify queue (reported when it next runs a
command: the console hub's ping), so the streams alone add transactions that are no
statements; `--streams-only` keeps the streams open but fetches nothing, to tell them
apart. PostgreSQL's CPU is that
of the bench database's sessions (/proc/<pid>/stat of each, as a share of one core).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx

from bench.common import (
    VACUUM_SESSION,
    Result,
    autovacuum_stand_in,
    bench_database,
    cpu_s,
    ms,
    replicas,
    spread,
)
from bench.receiver import Receipts, receiving
from scheduler_svc import schedule as schedules
from scheduler_svc import store
from scheduler_svc.config import Settings
from scheduler_svc.security import auth, principals

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
SELECT (extract(epoch FROM started_at - scheduled_for) * 1000)::float8 AS lag_ms, status, worker,
       scheduled_for
FROM job_runs
WHERE job_id BETWEEN $3 AND $4 AND scheduled_for >= $1 AND scheduled_for < $2
"""
WARM_UP_S = 3
# `--cold`: autovacuum's first ANALYZE of a new database may come this late (its naptime).
COLD_ANALYZE_S = 60.0
# `--cold`: p99 start lag by slices of the window this long (`--slice-s` sets another).
COLD_SLICE_S = 10.0
LEAD_S = 2
DEFAULT_CONCURRENCY = Settings().concurrency
TRANSACTIONS = """
SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()
"""
SESSIONS = """
SELECT pid, application_name = $1 AS vacuum
FROM pg_stat_activity WHERE datname = current_database()
"""
# The overview's live fragment, as console.js asks for it.
FRAGMENT = {"HX-Request": "true"}
# Fragments fetched to count the transactions of one, after a few untimed.
COUNTED_FETCHES = 20
# PostgreSQL 15 sends an idle session's statistics after 10 s at the latest
# (PGSTAT_IDLE_INTERVAL): a count read sooner may miss the fragments' transactions.
STATS_SETTLE_S = 11.0


@dataclass(slots=True)
class Console:
    """One simulated browser on the overview: what it heard and fetched."""

    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    events: int = 0
    fetches: int = 0
    failed: int = 0


@dataclass(slots=True)
class Consoles:
    """The open consoles, and the transactions of one overview fragment."""

    open: list[Console]
    per_fragment: float
    api_pid: int

    def counts(self) -> tuple[float, ...]:
        """Events, fetches and failed fetches so far, all consoles together, and the API
        replica's CPU seconds."""
        return (
            sum(c.events for c in self.open),
            sum(c.fetches for c in self.open),
            sum(c.failed for c in self.open),
            cpu_s(self.api_pid),
        )


async def _browse(
    client: httpx.AsyncClient, base: str, key: str, console: Console, fetching: bool = True
) -> None:
    """Keep the live stream open; fetch the overview's fragment on every change."""
    bearer = {"Authorization": f"Bearer {key}"}
    wanted = asyncio.Event()

    async def fetch() -> None:
        while True:
            await wanted.wait()
            wanted.clear()
            answer = await client.get(f"{base}/ui", headers={**bearer, **FRAGMENT})
            console.fetches += 1
            console.failed += answer.status_code != 200

    fetcher = asyncio.create_task(fetch())
    try:
        async with client.stream("GET", f"{base}/ui/events", headers=bearer) as stream:
            stream.raise_for_status()
            async for line in stream.aiter_lines():
                # The stream's first line, a comment, is sent once it has subscribed.
                console.subscribed.set()
                if line.strip() == "event: change":
                    console.events += 1
                    if fetching:
                        wanted.set()
    finally:
        fetcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fetcher


async def _transactions(conn: asyncpg.Connection[Any]) -> int:
    count: int = await conn.fetchval(TRANSACTIONS)
    return count


async def _per_fragment(url: str, client: httpx.AsyncClient, base: str, key: str) -> float:
    """Transactions of one overview fragment, counted on the database while nothing else
    uses it. The key's look-up, cached for SCHEDULER_API_KEY_CACHE_S, shows in it as a
    fraction."""
    headers = {"Authorization": f"Bearer {key}", **FRAGMENT}
    for _ in range(3):  # the sessions prepare their statements
        (await client.get(f"{base}/ui", headers=headers)).raise_for_status()
    conn = await asyncpg.connect(url)
    try:
        await _transactions(conn)  # this session's start and its statement prepared
        await asyncio.sleep(STATS_SETTLE_S)
        before = await _transactions(conn)
        for _ in range(COUNTED_FETCHES):
            (await client.get(f"{base}/ui", headers=headers)).raise_for_status()
        await asyncio.sleep(STATS_SETTLE_S)
        # Less this session's own reading, one transaction.
        return (await _transactions(conn) - before - 1) / COUNTED_FETCHES
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _consoles(
    url: str, count: int, logs: Path, fetching: bool = True
) -> AsyncIterator[Consoles | None]:
    """`count` consoles open on the overview, through an API replica of their own; with
    not `fetching`, their streams only."""
    if count == 0:
        yield None
        return
    key, prefix = auth.new_key()
    conn = await asyncpg.connect(url)
    try:
        # A key closes open mode; the worker replicas ask for none.
        await store.api_key_insert(conn, prefix, auth.key_hash(key), "bench", [principals.READ])
    finally:
        await conn.close()
    (logs / "api").mkdir()
    with replicas(url, 1, logs / "api", role="api", SCHEDULER_WORKER_ID="console-api") as (api,):
        base = f"http://127.0.0.1:{api.port}"  # type: ignore[attr-defined]
        limits = httpx.Limits(max_connections=2 * count + 2)
        timeout = httpx.Timeout(10, read=60)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            per_fragment = await _per_fragment(url, client, base, key)
            opened = Consoles([Console() for _ in range(count)], per_fragment, api.pid)
            tasks = [
                asyncio.create_task(_browse(client, base, key, c, fetching)) for c in opened.open
            ]
            try:
                async with asyncio.timeout(10):
                    await asyncio.gather(*(c.subscribed.wait() for c in opened.open))
                yield opened
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def _maybe_receiving(target: str) -> AsyncIterator[tuple[str | None, Receipts | None]]:
    if target != "http":
        yield None, None
        return
    async with receiving() as (url, receipts):
        yield url, receipts


async def prepare(
    url: str,
    jobs: int,
    schedule: str,
    target: dict[str, Any],
    cold: bool = False,
    history_days: int = 0,
) -> None:
    """Create `jobs` paused jobs and a bounded history of runs; vacuum and analyze. `cold`:
    the jobs alone, never analyzed, as a new user's brand-new database has them.
    `history_days`: the day partitions of job_runs as far back as that (empty but the
    history's day), as a system that keeps runs that long has them."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(MAKE_JOBS, jobs, schedule, json.dumps(target))
        if history_days:
            await conn.execute("SELECT history_partitions_create(7, $1)", history_days)
        if cold:
            return
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
    consoles: int = 0,
    streams_only: bool = False,
    cold: bool = False,
    history_days: int = 0,
    slice_s: float | None = None,
) -> dict[str, Any]:
    """Run the jobs for `seconds` after a warm-up, with `consoles` consoles open on the
    overview (their streams only if `streams_only`); the lags of the runs in that window.
    `cold`: on a brand-new database (prepare), from the first tick, without a warm-up.
    `history_days`: job_runs has day partitions that far back (prepare). `slice_s`: the
    p99 start lag of each slice of the window this long, too (`cold`: 10 s)."""
    async with bench_database() as url, _maybe_receiving(target) as (hook, receipts):
        spec: dict[str, Any] = {"type": "log"} if hook is None else {"type": "http", "url": hook}
        await prepare(url, jobs, schedule, spec, cold, history_days)
        return await measure_on(
            url,
            jobs,
            seconds,
            replica_count,
            schedule,
            target,
            phase,
            concurrency,
            receipts,
            consoles=consoles,
            streams_only=streams_only,
            cold=cold,
            slice_s=slice_s,
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
    consoles: int = 0,
    streams_only: bool = False,
    cold: bool = False,
    slice_s: float | None = None,
) -> dict[str, Any]:
    """measure() on a database that has the jobs already, paused, on `schedule`: jobs
    `first_job` to `first_job + jobs - 1` (by id), whatever else it holds. `env` goes
    to the replicas too."""
    environ = {"SCHEDULER_WEBHOOK_ALLOW_PRIVATE": "true", **(env or {})}
    if concurrency is not None:
        environ["SCHEDULER_CONCURRENCY"] = str(concurrency)
    last_job = first_job + jobs - 1
    with tempfile.TemporaryDirectory() as logs:
        # The consoles first: their fragment is counted on a database nothing else uses.
        async with _consoles(url, consoles, Path(logs), not streams_only) as watching:
            with replicas(url, replica_count, Path(logs), **environ) as processes:
                pids = [p.pid for p in processes]
                first_s = COLD_ANALYZE_S if cold else None
                async with autovacuum_stand_in(url, first_s=first_s) as vacuumed:
                    conn = await asyncpg.connect(url)
                    try:
                        first = await start(conn, jobs, schedule, phase, first_job)
                        window_start = first + timedelta(seconds=0 if cold else WARM_UP_S)
                        window_end = window_start + timedelta(seconds=seconds)
                        now = await conn.fetchval("SELECT now()")
                        await asyncio.sleep((window_start - now).total_seconds())
                        before = await _snapshot(conn, watching, pids)
                        now = await conn.fetchval("SELECT now()")
                        await asyncio.sleep((window_end - now).total_seconds())
                        after = await _snapshot(conn, watching, pids)
                        # A little more for the window's last runs.
                        await asyncio.sleep(2)
                        # Its first column, whatever the release (the backlog gauge's count).
                        backlog = await conn.fetchval(store.QUERIES["runs_due_backlog"])
                        rows = await conn.fetch(LAGS, window_start, window_end, first_job, last_job)
                    finally:
                        await conn.close()
    lags = [r["lag_ms"] for r in rows if r["lag_ms"] is not None]
    elapsed = after[0] - before[0]
    pg_cpu = {pid: t - before[3][pid] for pid, t in after[3].items() if pid in before[3]}
    pg_cpu_s = sum(t for pid, t in pg_cpu.items() if pid > 0)
    vacuum_cpu_s = sum(t for pid, t in pg_cpu.items() if pid < 0)
    cpu_s_by_process = {
        "replicas": after[5] - before[5],
        "postgres": pg_cpu_s,
        # The bench's VACUUM (ANALYZE) every 5 s when the server's autovacuum is off: the
        # work autovacuum's own processes would do, less often.
        "vacuum": vacuum_cpu_s,
        "bench": after[4] - before[4],
    }
    # Ticks in the window that ran (a skipped one costs a fraction of a run).
    ran = sum(1 for r in rows if r["lag_ms"] is not None) or 1
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
        "pg_tx_per_s": (after[1] - before[1]) / elapsed,
        # Share of one core, the sessions open at both ends of the window.
        "pg_cpu": pg_cpu_s / elapsed,
        # This process: the consoles, and the receiver of the http target.
        "bench_process_cpu": (after[4] - before[4]) / elapsed,
        # CPU per tick that ran in the window, by process: the worker replicas (with
        # consoles, not their API replica), the database's sessions, and this process
        # (the receiver of the http target, and the consoles).
        "cpu_us_per_tick": {
            **{k: v / ran * 1e6 for k, v in cpu_s_by_process.items()},
            "all": sum(cpu_s_by_process.values()) / ran * 1e6,
        },
        # Due ticks not yet started 2 s after the window: a backlog left behind.
        "backlog_at_end": backlog,
        "consoles": consoles,
        "streams_only": streams_only,
        "cold": cold,
    }
    if slice_s is None and cold:
        slice_s = COLD_SLICE_S
    if slice_s is not None:
        # When the tail comes: p99 start lag by slice of the window.
        by_slice: dict[int, list[float]] = {}
        for r in rows:
            if r["lag_ms"] is not None:
                at = (r["scheduled_for"] - window_start).total_seconds() // slice_s
                by_slice.setdefault(int(at), []).append(r["lag_ms"])
        figures["p99_by_slice_ms"] = [spread(by_slice[k])["p99"] for k in sorted(by_slice)]
        figures["slice_s"] = slice_s
    if watching is not None:
        events, fetches, failed, api_cpu = (a - b for a, b in zip(after[2], before[2], strict=True))
        figures["console_events_per_s"] = events / elapsed / consoles
        figures["console_fetches_per_s"] = fetches / elapsed
        figures["console_failed_fetches"] = int(failed)
        # Share of one core: what the consoles cost the machine's CPU beside the rest.
        figures["api_replica_cpu"] = api_cpu / elapsed
        figures["tx_per_fragment"] = watching.per_fragment
        figures["console_bound_tx_per_s"] = fetches / elapsed * watching.per_fragment
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


async def _snapshot(
    conn: asyncpg.Connection[Any], watching: Consoles | None, replica_pids: list[int]
) -> tuple[float, int, tuple[float, ...], dict[int, float], float, float]:
    """Now (monotonic), the database's transactions so far, the consoles' counts, the
    CPU seconds of each of the database's sessions, this process's, and the replicas'."""
    sessions = await conn.fetch(SESSIONS, VACUUM_SESSION)
    # The autovacuum stand-in's session counts under a key of its own: minus its pid.
    pids = [-r["pid"] if r["vacuum"] else r["pid"] for r in sessions]
    cpu = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # the session ended meanwhile
            cpu[pid] = cpu_s(abs(pid))
    counts = watching.counts() if watching is not None else ()
    replicas_s = sum(cpu_s(pid) for pid in replica_pids)
    return time.monotonic(), await _transactions(conn), counts, cpu, time.process_time(), replicas_s


# The command line's table has these too: PostgreSQL's side, and the consoles'.
CONSOLE_HEADER = [
    "PG tx/s",
    "PG CPU",
    "consoles",
    "events/s each",
    "fetches/s",
    "tx/fragment",
    "bound",
    "CPU: API / bench",
]


# And CPU per tick that ran, by process, in µs; the backlog left 2 s after the window.
CPU_HEADER = ["CPU µs/tick: replicas", "PG", "vacuum", "bench", "all", "backlog"]


def cpu_cells(f: dict[str, Any]) -> list[object]:
    """The CPU_HEADER cells of one measure()."""
    cpu = f["cpu_us_per_tick"]
    keys = ("replicas", "postgres", "vacuum", "bench", "all")
    cells: list[object] = [f"{cpu[k]:.0f}" for k in keys]
    return [*cells, f["backlog_at_end"]]


def console_cells(f: dict[str, Any]) -> list[object]:
    """The CONSOLE_HEADER cells of one measure()."""
    cells: list[object] = [
        f"{f['pg_tx_per_s']:.0f}",
        f"{f['pg_cpu']:.0%}",
        f"{f['consoles']} (streams only)" if f["streams_only"] else f["consoles"],
    ]
    if not f["consoles"]:
        return [*cells, "-", "-", "-", "-", f"- / {f['bench_process_cpu']:.0%}"]
    return [
        *cells,
        f"{f['console_events_per_s']:.2f}",
        f"{f['console_fetches_per_s']:.1f}"
        + (f" ({f['console_failed_fetches']} failed)" if f["console_failed_fetches"] else ""),
        f"{f['tx_per_fragment']:.2f}",
        f"{f['console_bound_tx_per_s']:.0f}",
        f"{f['api_replica_cpu']:.0%} / {f['bench_process_cpu']:.0%}",
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
    parser.add_argument("--consoles", type=int, default=0)
    parser.add_argument("--streams-only", action="store_true")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="a brand-new database: no history, no statistics until a first ANALYZE a "
        "minute in (autovacuum's naptime); lag from the first tick, by 10 s slice too",
    )
    parser.add_argument(
        "--slice-s",
        type=float,
        default=None,
        help="also give the p99 start lag of each slice of the window this long (with --cold: 10)",
    )
    parser.add_argument(
        "--history-days",
        type=int,
        default=0,
        help="give job_runs day partitions this far back, as a retention of that many "
        "days makes (SCHEDULER_RUN_RETENTION_DAYS, 30 by default); 0: the week ahead only",
    )
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
            args.consoles,
            args.streams_only,
            args.cold,
            args.history_days,
            args.slice_s,
        )
        for jobs in args.jobs
    ]
    header = HEADER + CPU_HEADER + CONSOLE_HEADER
    rows = [row(f) + cpu_cells(f) + console_cells(f) for f in measured]
    print(Result(title(args.seconds, measured), header, rows).table())
    for f in measured:
        if "p99_by_slice_ms" in f:
            slices = ", ".join(f"{ms(p)}" for p in f["p99_by_slice_ms"])
            since = "the first tick" if f["cold"] else "the warm-up"
            print(f"{f['jobs']} jobs: start p99 by {f['slice_s']:g} s from {since}:")
            print(f"  {slices} ms")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
