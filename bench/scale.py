"""Scale: the due claim with many jobs, and the service on a long run history.

    python -m bench.scale [--quick] [--jobs 1000000] [--runs 50000000] [--days 60]
                          [--claim-sizes 10000 100000 1000000] [--due 300]
                          [--settings NAME=VALUE,...] [--out PATH] [--plans]

It measures the scheduler_svc that Python imports, on the schema that code makes
(partitioned job_runs, or the one table of the releases before it). To measure an
earlier release with this same bench, put a checkout of it first on the path with the
bench beside it (bench/README.md, "scale", has the commands).

Claim (`--claim-sizes`; none: skipped): one database grows to each size in turn,
`--due` of its jobs due and the rest due later (a tenth paused), vacuumed and analyzed.
The scheduler's claim (`store.jobs_claim_due`, batch 500, in a transaction that is
rolled back so the same jobs stay due) is timed `CLAIMS` times on one connection, so
asyncpg's prepared statement goes from custom to generic plans as the scheduler's
does; its EXPLAIN (ANALYZE, BUFFERS) is kept, and the generic plan's too.

History: a second database gets `--jobs` jobs and `--runs` finished runs over `--days`
days ending now (bench/history.py: how they are spread and loaded). On it, each on
one connection, the statements prepared, timed after a few untimed calls (so their
plans are what a long-running replica's are, generic or custom as PostgreSQL picks),
once per round of `--settings` set on the database (default: the server's settings,
then jit=off too if the server has jit on):

- the due claim, as above, with `--due` of the jobs due;
- `GET /runs/{id}`: `store.run_get` on run ids picked at random across the whole
  history (one from each of as many random pages of the table);
- a job's history: `store.runs_list`, the first page of 50 of a random job of deep
  history, and the page by cursor half-way down that history;
- fire lag at 1,000 ticks/s with that history present: bench/firelag.py's measurement,
  2 replicas, the 1,000 paused `@every 1s` log-target jobs of the history activated
  with spread phases; the replicas' retention is set past the history so that their
  maintenance leaves it alone;
- retention, last: on the partitioned schema `store.history_partitions_detach` (then
  `store.history_partition_drop` of each detached day) with the
  retention that drops exactly the oldest day, timed for each of the oldest
  `DROP_DAYS` days in turn, then one `store.runs_prune` call (the rest of a
  maintenance pass); on the unpartitioned one `store.runs_prune` (batches of
  maintenance.PRUNE_BATCH under the maintenance lock) deleting the oldest day and the
  next up to the time of day it is, for at most `PRUNE_S`, and the time a day's runs
  take at the rate it went;
- disk: job_runs and every partition, index and TOAST table of it, per million runs.

The EXPLAIN (ANALYZE, BUFFERS) of run_get and runs_list under generic plans is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

import scheduler_svc
from bench import firelag, history
from bench.common import Result, bench_database, ms, spread
from scheduler_svc import store
from scheduler_svc.engine.maintenance import MAINTENANCE_LOCK_KEY, PRUNE_BATCH
from scheduler_svc.store import db

CLAIM_BATCH = 500  # scheduler.tick_once's default
CLAIMS = 40
WARM_UP = 10  # untimed calls first: asyncpg's statement turns generic after 5
PRUNE_S = 120.0
DROP_DAYS = 3
PAGE = 50
FULL = history.Shape(jobs=1_000_000, runs=50_000_000, days=60)
QUICK = history.Shape(jobs=100_000, runs=2_000_000, days=60)
TARGETS = {"run_get_p99": 2.0, "runs_list_p99": 5.0, "drop_day": 100.0, "fire_lag_p99": 25.0}

# Jobs $1 .. $2 (by number), the first $3 overall due a second ago, the others due
# within the next day, every tenth paused.
MAKE_JOBS = """
INSERT INTO jobs (tenant, name, schedule, status, next_run_at)
SELECT 'bench', 'job-' || i, '@every 1d',
       CASE WHEN i > $3 AND i % 10 = 0 THEN 'paused' ELSE 'active' END,
       CASE WHEN i <= $3 THEN now() - interval '1 second'
            WHEN i % 10 = 0 THEN NULL
            ELSE now() + make_interval(secs => 60 + (i::bigint * 7919 % 86400)) END
FROM generate_series($1::int, $2::int) AS i
"""
# One run id from each of the pages that a sample of about $1 % of the table's pages
# gives (rows of one page are runs of consecutive ticks).
SAMPLE_RUN_IDS = """
SELECT min(id) FROM job_runs TABLESAMPLE SYSTEM ($1) REPEATABLE (7)
GROUP BY tableoid, (ctid::text::point)[0]
"""
PAGES = """
SELECT coalesce((SELECT sum(c.relpages) FROM pg_partition_tree('job_runs') t
                 JOIN pg_class c ON c.oid = t.relid),
                (SELECT relpages FROM pg_class WHERE oid = 'job_runs'::regclass))::bigint
"""
# The id of the run `$2` places down job $1's history, newest first: a cursor half-way.
RUN_AT = "SELECT id FROM job_runs WHERE job_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1"


async def _explain(conn: asyncpg.Connection[Any], sql: str, *args: object) -> list[str]:
    rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
    return [r[0] for r in rows]


async def _plan(
    conn: asyncpg.Connection[Any], sql: str, types: str, args: str, mode: str
) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of EXECUTE under plan_cache_mode = `mode`, rolled back.
    Parameters past those `args` gives are NULL (a statement may have gained some)."""
    extra = max(map(int, re.findall(r"\$(\d+)", sql)), default=0) - len(args.split(","))
    args = ", ".join([args, *["NULL"] * extra])
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        await conn.execute(f"PREPARE bench_{mode} ({types}) AS {sql}")
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_{mode} ({args})")
        return [r[0] for r in rows]
    finally:
        # Undoes what ANALYZE did (row locks); a PREPARE outlives its transaction.
        await transaction.rollback()
        await conn.execute(f"DEALLOCATE bench_{mode}")


def _statement(name: str) -> str:
    return store.QUERIES[name].rstrip().rstrip(";")


async def claim_at(
    conn: asyncpg.Connection[Any], jobs: int, due: int, times: int = CLAIMS
) -> dict[str, Any]:
    """Time the due claim on the table as it is; its plans."""
    timings: list[float] = []
    claimed = 0
    for _ in range(times):
        transaction = conn.transaction()
        await transaction.start()
        try:
            started = time.perf_counter()
            claimed = len(await store.jobs_claim_due(conn, None, CLAIM_BATCH))
            timings.append((time.perf_counter() - started) * 1000)
        finally:
            await transaction.rollback()
    sql = _statement("jobs_claim_due")
    args = f"NULL, {CLAIM_BATCH}"
    custom = await _plan(conn, sql, "timestamptz, bigint", args, "force_custom_plan")
    generic = await _plan(conn, sql, "timestamptz, bigint", args, "force_generic_plan")
    return {
        "jobs": jobs,
        "due": due,
        "claimed": claimed,
        "claim_ms": spread(timings),
        "plan_custom": custom,
        "plan_generic": generic,
    }


async def claims(sizes: list[int], due: int) -> dict[str, Any]:
    """The claim at each size, growing one table."""
    measured = []
    async with bench_database() as url:
        conn = await asyncpg.connect(url)
        try:
            have = 0
            for size in sorted(sizes):
                for start in range(have + 1, size + 1, 200_000):
                    await conn.execute(MAKE_JOBS, start, min(size, start + 199_999), due)
                have = size
                await conn.execute("VACUUM ANALYZE jobs")
                measured.append(await claim_at(conn, size, due))
        finally:
            await conn.close()
    return {"sizes": measured}


async def _sample_run_ids(conn: asyncpg.Connection[Any], count: int) -> list[int]:
    """About `count` ids of runs from random pages of the whole history."""
    pages: int = await conn.fetchval(PAGES)
    percent = min(100.0, 100.0 * 1.5 * count / max(1, pages))
    ids = [r[0] for r in await conn.fetch(SAMPLE_RUN_IDS, percent)]
    random.Random(7).shuffle(ids)
    assert ids, "no run sampled"
    return [ids[i % len(ids)] for i in range(count)]


async def _timed(calls: list[Any]) -> list[float]:
    timings = []
    for call in calls:
        started = time.perf_counter()
        await call()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def time_run_get(conn: asyncpg.Connection[Any], samples: int) -> dict[str, Any]:
    """store.run_get on random runs; its generic plan."""
    ids = await _sample_run_ids(conn, samples + WARM_UP)
    found = 0

    async def get(run_id: int) -> None:
        nonlocal found
        found += await store.run_get(conn, history.TENANT, run_id) is not None

    for run_id in ids[:WARM_UP]:
        await get(run_id)
    timings = await _timed([lambda r=run_id: get(r) for run_id in ids[WARM_UP:]])
    assert found == len(ids), f"{len(ids) - found} sampled runs not found"
    plan = await _plan(
        conn, _statement("run_get"), "text, bigint", f"'bench', {ids[0]}", "force_generic_plan"
    )
    return {"run_get_ms": spread(timings), "plan_run_get": plan}


async def time_runs_list(
    conn: asyncpg.Connection[Any], shape: history.Shape, samples: int
) -> dict[str, Any]:
    """store.runs_list: first pages and pages by cursor half-way down, of random deep
    jobs; their generic plans."""
    rng = random.Random(11)
    jobs = [rng.randint(1, shape.deep) for _ in range(samples + WARM_UP)]
    half = shape.runs_per_deep_job // 2
    cursors = [await conn.fetchval(RUN_AT, job, half) for job in jobs]
    assert all(c is not None for c in cursors), "a deep job has fewer runs than expected"
    pages = 0

    async def page(job: int, before: int | None) -> None:
        nonlocal pages
        rows = await store.runs_list(conn, history.TENANT, job, before_id=before, limit=PAGE)
        pages += len(rows) == PAGE

    for job, cursor in zip(jobs[:WARM_UP], cursors[:WARM_UP], strict=True):
        await page(job, None)
        await page(job, cursor)
    pairs = list(zip(jobs[WARM_UP:], cursors[WARM_UP:], strict=True))
    first = await _timed([lambda j=job: page(j, None) for job, _ in pairs])
    middle = await _timed([lambda j=job, c=cursor: page(j, c) for job, cursor in pairs])
    assert pages == 2 * len(jobs), "a page came back short"
    sql, types = _statement("runs_list"), "text, bigint, bigint, bigint"
    # Releases since partitioning read a page window by window: the plan of the first.
    window = ", 1, NULL" if "$6" in sql else ""
    types += ", int, int" if window else ""
    job, cursor = jobs[0], cursors[0]
    return {
        "runs_list_first_ms": spread(first),
        "runs_list_middle_ms": spread(middle),
        "plan_runs_list_first": await _plan(
            conn, sql, types, f"'bench', {job}, NULL, {PAGE}{window}", "force_generic_plan"
        ),
        "plan_runs_list_middle": await _plan(
            conn, sql, types, f"'bench', {job}, {cursor}, {PAGE}{window}", "force_generic_plan"
        ),
    }


async def _drop_days(conn: asyncpg.Connection[Any]) -> dict[str, Any]:
    """The oldest days dropped one at a time, as maintenance does: detached under the
    maintenance lock (`lock_ms`: how long job_runs is locked), then dropped apart (`ms`:
    both); then a runs_prune call."""
    drops = []
    for _ in range(DROP_DAYS):
        name, _, upper = (await history.partitions(conn))[0]
        rows = await conn.fetchval(f"SELECT count(*) FROM {name}")
        now: datetime = await conn.fetchval("SELECT now()")
        # Partitions that end more than N days ago go: N whole days since this one ended.
        retention = (now - upper) // timedelta(days=1)
        started = time.perf_counter()
        dropped = await store.history_partitions_detach(conn, retention, MAINTENANCE_LOCK_KEY)
        lock_ms = (time.perf_counter() - started) * 1000
        for partition in dropped:
            await store.history_partition_drop(conn, partition)
        elapsed_ms = (time.perf_counter() - started) * 1000
        assert dropped == [name], f"dropped {dropped}, not just {name}"
        drops.append(
            {
                "partition": name,
                "rows": rows,
                "retention_days": retention,
                "lock_ms": lock_ms,
                "ms": elapsed_ms,
            }
        )
    started = time.perf_counter()
    pruned = await store.runs_prune(
        conn, drops[-1]["retention_days"], PRUNE_BATCH, MAINTENANCE_LOCK_KEY
    )
    prune_ms = (time.perf_counter() - started) * 1000
    return {
        "drops": drops,
        "drop_ms_max": max(d["ms"] for d in drops),
        "drop_lock_ms_max": max(d["lock_ms"] for d in drops),
        "prune_after_drop_ms": prune_ms,
        "pruned_after_drop": pruned,
    }


async def _prune_day(
    conn: asyncpg.Connection[Any], loaded: dict[str, Any], shape: history.Shape, prune_s: float
) -> dict[str, Any]:
    """runs_prune of the history's oldest day and more, batch by batch, for at most
    `prune_s`; the rate, and a day's runs at that rate."""
    first: datetime = loaded["first_tick"]
    now: datetime = await conn.fetchval("SELECT now()")
    # Runs older than N days go, N whole days since the history's second day began: the
    # first day, and the second up to the time of day it is now.
    retention = (now - first - timedelta(days=1)) // timedelta(days=1)
    day_rows = history.runs_of_day(shape, loaded, first)
    pruned = 0
    started = time.perf_counter()
    while time.perf_counter() - started < prune_s:
        deleted = await store.runs_prune(conn, retention, PRUNE_BATCH, MAINTENANCE_LOCK_KEY)
        pruned += deleted
        if deleted < PRUNE_BATCH:
            break
    seconds = time.perf_counter() - started
    rate = pruned / seconds if seconds else float("nan")
    return {
        "pruned": pruned,
        "prune_s": seconds,
        "prune_rate": rate,
        "retention_days": retention,
        "day_rows": day_rows,
        "day_s": day_rows / rate if rate else float("nan"),
    }


def _code() -> dict[str, Any]:
    """Which scheduler_svc this measured: its folder and commit."""
    folder = Path(scheduler_svc.__file__).resolve().parent

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=folder, check=False
        ).stdout
        return out.strip()

    return {
        "path": str(folder),
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "changed_files": len(git("status", "--porcelain", "--untracked-files=no").splitlines()),
    }


async def _round(
    url: str, shape: history.Shape, samples: int, lag_seconds: float
) -> dict[str, Any]:
    """The claim, run_get, runs_list and fire lag, with the database's settings as they
    are; the jobs are left as they were found (the due ones due, the fire-lag ones paused)."""
    figures: dict[str, Any] = {}
    # Each statement on a session as the service opens them: the claim on a worker's
    # (durable=False), the reads on an API replica's, with whatever settings that
    # release's create_pool gives its sessions.
    worker_pool = await db.create_pool(url, max_size=1, durable=False)
    api_pool = await db.create_pool(url, max_size=1)
    conn = await asyncpg.connect(url)
    try:
        async with worker_pool.acquire() as worker, api_pool.acquire() as api:
            figures["jit"] = await api.fetchval("SHOW jit")
            figures["plan_cache_mode"] = await worker.fetchval("SHOW plan_cache_mode")
            figures["claim"] = await claim_at(
                worker, shape.jobs, shape.due, max(CLAIMS, samples // 10)
            )
            figures.update(await time_run_get(api, samples))
            figures.update(await time_runs_list(api, shape, samples // 2))
        # Nothing but the fire-lag jobs is to fire while the replicas run.
        await conn.execute(
            "UPDATE jobs SET next_run_at = now() + interval '30 days' WHERE id <= $1", shape.due
        )
        print(f"  history: fire lag, jit {figures['jit']}", flush=True)
        figures["fire_lag"] = await firelag.measure_on(
            url,
            shape.lag_jobs,
            lag_seconds,
            2,
            "@every 1s",
            first_job=shape.first_lag_job,
            env={"SCHEDULER_RUN_RETENTION_DAYS": str(shape.days + 30)},
        )
        await conn.execute(
            "UPDATE jobs SET status = 'paused', next_run_at = NULL WHERE id >= $1",
            shape.first_lag_job,
        )
        await conn.execute(
            "UPDATE jobs SET next_run_at = now() - interval '1 second' WHERE id <= $1", shape.due
        )
    finally:
        await conn.close()
        await worker_pool.close()
        await api_pool.close()
    return figures


def parse_settings(text: str) -> dict[str, str]:
    """`name=value,name=value` (empty: none) as a dict."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"settings are name=value,name=value: {text!r}")
    return {name.strip(): value.strip() for name, value in pairs}


def _label(settings: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "server settings"


async def history_figures(
    shape: history.Shape,
    samples: int,
    lag_seconds: float,
    rounds: list[dict[str, str]] | None = None,
    prune_s: float = PRUNE_S,
) -> dict[str, Any]:
    """Load a history; time the claim, run_get, runs_list and fire lag on it once per
    round of database settings (set on the bench database, so that the replicas' sessions
    have them too; default: the server's as they are, then jit=off if the server has jit
    on); then retention, with the server's settings."""
    figures: dict[str, Any] = {
        "shape": {**dataclasses.asdict(shape), "deep": shape.deep},
        "code": _code(),
        "rounds": [],
    }
    async with bench_database() as url:
        conn = await asyncpg.connect(url)
        try:
            loaded = await history.load(conn, shape)
            figures["load"] = loaded
            figures["rows"] = await conn.fetchval("SELECT count(*) FROM job_runs")
            figures["disk_bytes"] = await history.disk_bytes(conn)
            database = await conn.fetchval("SELECT current_database()")
            server_jit = await conn.fetchval("SHOW jit")
        finally:
            await conn.close()
        if rounds is None:
            rounds = [{}, {"jit": "off"}] if server_jit == "on" else [{}]
        for settings in rounds:
            conn = await asyncpg.connect(url)
            try:
                # For the sessions opened from now on, the replicas' too.
                await conn.execute(f'ALTER DATABASE "{database}" RESET ALL')
                for name, value in settings.items():
                    await conn.execute(f'ALTER DATABASE "{database}" SET {name} = {value}')
            finally:
                await conn.close()
            measured = await _round(url, shape, samples, lag_seconds)
            figures["rounds"].append({"settings": settings, **measured})
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'ALTER DATABASE "{database}" RESET ALL')
        finally:
            await conn.close()
        conn = await asyncpg.connect(url)
        try:
            if loaded["partitioned"]:
                figures["retention"] = await _drop_days(conn)
            else:
                figures["retention"] = await _prune_day(conn, loaded, shape, prune_s)
        finally:
            await conn.close()
    return figures


def _met(value: float, target: float) -> str:
    return "yes" if value <= target else "NO"


def _history_result(h: dict[str, Any]) -> Result:
    shape, load, code, rounds = h["shape"], h["load"], h["code"], h["rounds"]
    partitioned = load["partitioned"]
    blank = [""] * len(rounds)
    rows: list[list[object]] = []

    def row(what: str, figures: list[str], target: str = "", met: list[str] | None = None) -> None:
        rows.append([what, *figures, target, " / ".join(met or [])])

    def once(what: str, figure: str, target: str = "", met: str = "") -> None:
        row(what, [figure, *blank[1:]], target, [met] if met else None)

    once(
        "job_runs",
        f"partitioned by day ({load['partitions_made']} past days made)"
        if partitioned
        else "one table",
    )
    once(
        "loaded (jobs, runs, indexes, vacuum)",
        f"{h['rows']:,} runs, {shape['jobs']:,} jobs in {load['load_s']:.0f} s "
        f"({h['rows'] / load['steps_s']['runs']:,.0f} runs/s inserting)",
    )
    once(
        "disk, job_runs with indexes",
        f"{h['disk_bytes'] / 2**30:.2f} GiB, "
        f"{h['disk_bytes'] / h['rows'] * 1e6 / 2**20:.0f} MiB per million runs",
    )
    row(
        f"due claim, batch {CLAIM_BATCH}, {shape['due']} due, p50 / p99 ms",
        [
            f"{ms(r['claim']['claim_ms']['p50'])} / {ms(r['claim']['claim_ms']['p99'])}"
            for r in rounds
        ],
    )
    get = [r["run_get_ms"] for r in rounds]
    row(
        f"GET /runs/{{id}} (run_get), {get[0]['count']:,} random runs, p50 / p99 ms",
        [f"{g['p50']:.2f} / {g['p99']:.2f}" for g in get],
        f"p99 ≤ {TARGETS['run_get_p99']:g} ms",
        [_met(g["p99"], TARGETS["run_get_p99"]) for g in get],
    )
    for key, what in (
        ("runs_list_first_ms", "first page"),
        ("runs_list_middle_ms", "page by cursor half-way"),
    ):
        spent = [r[key] for r in rounds]
        row(
            f"job history (runs_list), {what}, {spent[0]['count']:,} jobs, p50 / p99 ms",
            [f"{x['p50']:.2f} / {x['p99']:.2f}" for x in spent],
            f"p99 ≤ {TARGETS['runs_list_p99']:g} ms",
            [_met(x["p99"], TARGETS["runs_list_p99"]) for x in spent],
        )
    lags = [r["fire_lag"] for r in rounds]
    row(
        f"fire lag, {lags[0]['jobs']:,} ticks/s, 2 replicas, {lags[0]['seconds']:g} s: "
        "p50 / p99 / max ms",
        [
            f"{ms(x['start_lag_ms']['p50'])} / {ms(x['start_lag_ms']['p99'])} / "
            f"{ms(x['start_lag_ms']['max'])} ({x['runs']:,} runs, {x['skipped']} skipped, "
            f"{x['not_started']} not started)"
            for x in lags
        ],
        f"p99 ≤ {TARGETS['fire_lag_p99']:g} ms",
        [_met(x["start_lag_ms"]["p99"], TARGETS["fire_lag_p99"]) for x in lags],
    )
    retention = h["retention"]
    if partitioned:
        drops = retention["drops"]
        once(
            "retention: drop the oldest day (detach, then drop), ms",
            " / ".join(f"{d['ms']:.1f} ({d['rows']:,} runs)" for d in drops),
            f"≤ {TARGETS['drop_day']:g} ms",
            _met(retention["drop_ms_max"], TARGETS["drop_day"]),
        )
        once(
            "  of which job_runs locked (detach), ms",
            " / ".join(f"{d['lock_ms']:.1f}" for d in drops),
        )
        once(
            "then runs_prune once (the rest of a maintenance pass), ms",
            f"{retention['prune_after_drop_ms']:.1f} ({retention['pruned_after_drop']:,} runs)",
        )
    else:
        day_ms = retention["day_s"] * 1000
        once(
            "retention: runs_prune, batches of 5,000",
            f"{retention['pruned']:,} runs in {retention['prune_s']:.1f} s, "
            f"{retention['prune_rate']:,.0f} runs/s",
        )
        once(
            "retention: a day's runs at that rate, ms",
            f"{day_ms:,.0f} ({retention['day_rows']:,} runs)",
            f"≤ {TARGETS['drop_day']:g} ms",
            _met(day_ms, TARGETS["drop_day"]),
        )
    changed = f" + {code['changed_files']} changed files" if code["changed_files"] else ""
    title = (
        f"Scale: {h['rows']:,} runs of {shape['jobs']:,} jobs over {shape['days']} days, "
        f"{'partitioned' if partitioned else 'unpartitioned'} "
        f"(scheduler_svc {code['commit']}{changed})"
    )
    header = ["what", *[_label(r["settings"]) for r in rounds], "target", "met"]
    return Result(title, header, rows, h)


def _results(claim: dict[str, Any] | None, history_figures: dict[str, Any] | None) -> list[Result]:
    results = []
    if claim is not None and claim["sizes"]:
        sizes = claim["sizes"]
        base = sizes[0]["claim_ms"]["p50"]
        claim_rows: list[list[object]] = [
            [
                f"{s['jobs']:,}",
                s["due"],
                s["claimed"],
                ms(s["claim_ms"]["p50"]),
                ms(s["claim_ms"]["p99"]),
                ms(s["claim_ms"]["max"]),
                f"{s['claim_ms']['p50'] / base:.2f}x",
            ]
            for s in sizes
        ]
        claim["ratio_largest_to_smallest_p50"] = sizes[-1]["claim_ms"]["p50"] / base
        results.append(
            Result(
                f"Scale: due claim (jobs_claim_due, batch {CLAIM_BATCH}), {CLAIMS} claims each, ms",
                ["jobs", "due", "claimed", "p50", "p99", "max", "p50 vs smallest"],
                claim_rows,
                claim,
            )
        )
    if history_figures is not None:
        results.append(_history_result(history_figures))
    return results


async def measure(
    sizes: list[int],
    due: int,
    shape: history.Shape | None,
    quick: bool,
    rounds: list[dict[str, str]] | None = None,
) -> list[Result]:
    claim = await claims(sizes, due) if sizes else None
    figures = None
    if shape is not None:
        samples = 600 if quick else 2000
        figures = await history_figures(shape, samples, 10.0 if quick else 60.0, rounds)
    return _results(claim, figures)


async def run(quick: bool) -> list[Result]:
    """10k/100k/1M jobs for the claim; 1M jobs and 50M runs over 60 days (quick:
    10k/100k jobs; 100k jobs and 2M runs)."""
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    return await measure(sizes, 300, QUICK if quick else FULL, quick)


def print_plans(results: list[Result]) -> None:
    for result in results:
        figures: dict[str, Any] = result.figures
        for size in figures.get("sizes", []):
            for kind in ("custom", "generic"):
                print(f"-- jobs_claim_due at {size['jobs']:,} jobs, {kind} plan")
                print("\n".join(size[f"plan_{kind}"]))
        for round_ in figures.get("rounds", []):
            plans = {"plan_jobs_claim_due": round_["claim"]["plan_generic"], **round_}
            for key in (
                "plan_jobs_claim_due",
                "plan_run_get",
                "plan_runs_list_first",
                "plan_runs_list_middle",
            ):
                print(f"-- {key[5:]}, generic plan, {_label(round_['settings'])}")
                print("\n".join(plans[key]))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100k jobs, 2M runs, 10 s of lag")
    parser.add_argument("--jobs", type=int, help="jobs of the history (1,000,000; quick 100,000)")
    parser.add_argument("--runs", type=int, help="runs of the history (50M; quick 2M); 0: none")
    parser.add_argument("--days", type=int, default=60, help="days of the history")
    parser.add_argument(
        "--claim-sizes",
        type=int,
        nargs="*",
        help="jobs for the claim alone (10k 100k 1M; quick 10k 100k); none: skip it",
    )
    parser.add_argument("--due", type=int, default=300)
    parser.add_argument(
        "--settings",
        action="append",
        type=parse_settings,
        metavar="NAME=VALUE,...",
        help="one round of the history's timings with these settings on the database "
        "(repeat for more rounds; '' is the server's own); default: the server's, then "
        "jit=off if the server has jit on",
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--plans", action="store_true", help="print the EXPLAIN output too")
    args = parser.parse_args()
    default = QUICK if args.quick else FULL
    runs = default.runs if args.runs is None else args.runs
    shape = (
        history.Shape(jobs=args.jobs or default.jobs, runs=runs, days=args.days, due=args.due)
        if runs
        else None
    )
    sizes = args.claim_sizes
    if sizes is None:
        sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    started = datetime.now(UTC)
    clock = time.monotonic()
    results = await measure(sizes, args.due, shape, args.quick, args.settings)
    for result in results:
        print(result.table(), end="\n\n")
    if args.plans:
        print_plans(results)
    if args.out:
        from bench.__main__ import machine, write

        document = {
            "started_at": started.isoformat(),
            "quick": args.quick,
            "argv": sys.argv[1:],
            "machine": await machine(),
            "code": _code(),
            "scenarios": {
                "scale": [
                    {"title": r.title, "header": r.header, "rows": r.rows, "figures": r.figures}
                    for r in results
                ]
            },
            "seconds": {"scale": time.monotonic() - clock},
            "errors": {},
        }
        write(document, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
