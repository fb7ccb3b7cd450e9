"""Scale: the scheduler's due claim with many jobs, and the runs table with many rows.

    python -m bench.scale [--jobs 10000 100000 1000000] [--due 300] [--runs 10000000]

Claim: one database grows to each `--jobs` size in turn, `--due` of them due and
the rest due later (a tenth paused), vacuumed and analyzed. The scheduler's claim
(`store.jobs_claim_due`, batch 500, in a transaction that is rolled back so the same
jobs stay due) is timed `CLAIMS` times on one connection, so asyncpg's prepared
statement goes from custom to generic plans as the scheduler's does; its EXPLAIN
(ANALYZE, BUFFERS) is kept, and the generic plan's too.

Runs: a second database gets `--runs` finished runs of 10,000 jobs spread over the
last 60 days in creation order (so half are past the 30-day retention), loaded with
INSERT … SELECT generate_series with the table's secondary indexes dropped and then
rebuilt from schema.sql. Then `store.runs_list` (a job's first page, and a page
half-way down its history by cursor) is timed, and `store.runs_prune` (batches of
maintenance.PRUNE_BATCH under the maintenance lock) runs for at most `PRUNE_S`.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import asyncpg

from bench.common import Result, bench_database, ms, spread
from scheduler_svc import store
from scheduler_svc.engine.maintenance import MAINTENANCE_LOCK_KEY, PRUNE_BATCH
from scheduler_svc.store import db

CLAIM_BATCH = 500  # scheduler.tick_once's default
CLAIMS = 40
RUN_JOBS = 10_000
LISTS = 200
PRUNE_S = 30.0
RETENTION_DAYS = 30

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
# Runs $1 .. $2 - 1 of $4 over jobs 1 .. $3: run i is job i % $3 + 1's (i / $3)th, in
# creation order, spread evenly over the last 60 days.
MAKE_RUNS = """
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, attempt, next_attempt_at,
                      started_at, finished_at, duration_ms, worker, created_at)
SELECT i % $3 + 1, 'bench', t, 'succeeded', 1, t, t, t + interval '5 ms', 5, 'replica-0', t
FROM generate_series($1::bigint, $2::bigint - 1) AS i,
     LATERAL (SELECT now() - interval '60 days'
                     + (i / $3) * (interval '60 days' / greatest(1, $4::bigint / $3))) AS s(t)
"""
SECONDARY_INDEXES = """
SELECT indexname FROM pg_indexes
WHERE tablename = 'job_runs' AND indexname <> 'job_runs_pkey'
"""


async def _explain(conn: asyncpg.Connection[Any], sql: str, *args: object) -> list[str]:
    rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
    return [r[0] for r in rows]


async def _plan(
    conn: asyncpg.Connection[Any], sql: str, types: str, args: str, mode: str
) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of EXECUTE under plan_cache_mode = `mode`, rolled back."""
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


async def claim_at(conn: asyncpg.Connection[Any], jobs: int, due: int) -> dict[str, Any]:
    """Time the due claim on the table as it is; its plans."""
    timings: list[float] = []
    claimed = 0
    for _ in range(CLAIMS):
        transaction = conn.transaction()
        await transaction.start()
        try:
            started = time.perf_counter()
            claimed = len(await store.jobs_claim_due(conn, None, CLAIM_BATCH))
            timings.append((time.perf_counter() - started) * 1000)
        finally:
            await transaction.rollback()
    sql = store.QUERIES["jobs_claim_due"].rstrip().rstrip(";")
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


async def runs_table(rows: int, prune_s: float) -> dict[str, Any]:
    """Load `rows` runs; time runs_list and the pruning rate."""
    async with bench_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(MAKE_JOBS, 1, RUN_JOBS, 0)
            started = time.perf_counter()
            for (name,) in await conn.fetch(SECONDARY_INDEXES):
                await conn.execute(f'DROP INDEX "{name}"')
            for start in range(0, rows, 1_000_000):
                size = min(1_000_000, rows - start)
                await conn.execute(MAKE_RUNS, start, start + size, RUN_JOBS, rows)
            await conn.execute("SET maintenance_work_mem = '256MB'")
            await db.apply_schema(conn)  # builds the indexes again, as schema.sql has them
            await conn.execute("VACUUM ANALYZE job_runs")
            load_s = time.perf_counter() - started
            count = await conn.fetchval("SELECT count(*) FROM job_runs")
            size_bytes = await conn.fetchval("SELECT pg_total_relation_size('job_runs')")
            lists = await _time_lists(conn, count)
            plan_list = await _explain(
                conn, store.QUERIES["runs_list"], "bench", RUN_JOBS // 2, None, 50
            )
            pruned, prune_seconds = await _prune(conn, prune_s)
        finally:
            await conn.close()
    return {
        "rows": count,
        "table_bytes": size_bytes,
        "load_s": load_s,
        **lists,
        "pruned": pruned,
        "prune_s": prune_seconds,
        "prune_rate": pruned / prune_seconds if prune_seconds else float("nan"),
        "plan_runs_list": plan_list,
    }


async def _time_lists(conn: asyncpg.Connection[Any], count: int) -> dict[str, Any]:
    rng = random.Random(7)
    first: list[float] = []
    deep: list[float] = []
    for _ in range(LISTS):
        job = rng.randint(1, RUN_JOBS)
        started = time.perf_counter()
        page = await store.runs_list(conn, "bench", job, before_id=None, limit=50)
        first.append((time.perf_counter() - started) * 1000)
        assert page
        started = time.perf_counter()
        await store.runs_list(conn, "bench", job, before_id=count // 2, limit=50)
        deep.append((time.perf_counter() - started) * 1000)
    return {"runs_list_first_ms": spread(first), "runs_list_middle_ms": spread(deep)}


async def _prune(conn: asyncpg.Connection[Any], prune_s: float) -> tuple[int, float]:
    pruned = 0
    started = time.perf_counter()
    while time.perf_counter() - started < prune_s:
        deleted = await store.runs_prune(conn, RETENTION_DAYS, PRUNE_BATCH, MAINTENANCE_LOCK_KEY)
        pruned += deleted
        if deleted < PRUNE_BATCH:
            break
    return pruned, time.perf_counter() - started


def _results(claim: dict[str, Any], runs: dict[str, Any] | None) -> list[Result]:
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
    results = [
        Result(
            f"Scale: due claim (jobs_claim_due, batch {CLAIM_BATCH}), {CLAIMS} claims each, ms",
            ["jobs", "due", "claimed", "p50", "p99", "max", "p50 vs smallest"],
            claim_rows,
            claim,
        )
    ]
    if runs is not None:
        first, middle = runs["runs_list_first_ms"], runs["runs_list_middle_ms"]
        results.append(
            Result(
                f"Scale: runs table of {runs['rows']:,} rows "
                f"({runs['table_bytes'] / 2**30:.1f} GiB, loaded in {runs['load_s']:.0f} s)",
                ["what", "figure"],
                [
                    [
                        "runs_list first page (50), p50 / p99 ms",
                        f"{ms(first['p50'])} / {ms(first['p99'])}",
                    ],
                    [
                        "runs_list page by cursor, mid-table, p50 / p99 ms",
                        f"{ms(middle['p50'])} / {ms(middle['p99'])}",
                    ],
                    ["runs_prune: runs deleted", f"{runs['pruned']:,} in {runs['prune_s']:.1f} s"],
                    ["runs_prune: runs/s", f"{runs['prune_rate']:,.0f}"],
                ],
                runs,
            )
        )
    return results


async def run(quick: bool) -> list[Result]:
    """10k/100k/1M jobs for the claim, 10M runs (quick: 10k/100k jobs, 1M runs)."""
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    claim = await claims(sizes, 300)
    runs = await runs_table(1_000_000 if quick else 10_000_000, 10.0 if quick else PRUNE_S)
    return _results(claim, runs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--due", type=int, default=300)
    parser.add_argument("--runs", type=int, default=10_000_000, help="0: skip the runs table")
    parser.add_argument("--plans", action="store_true", help="print the EXPLAIN output too")
    args = parser.parse_args()
    claim = await claims(args.jobs, args.due)
    runs = await runs_table(args.runs, PRUNE_S) if args.runs else None
    for result in _results(claim, runs):
        print(result.table(), end="\n\n")
    if args.plans:
        for size in claim["sizes"]:
            print(f"-- jobs_claim_due at {size['jobs']:,} jobs, custom plan")
            print("\n".join(size["plan_custom"]))
            print(f"-- jobs_claim_due at {size['jobs']:,} jobs, generic plan")
            print("\n".join(size["plan_generic"]))
        if runs:
            print("-- runs_list")
            print("\n".join(runs["plan_runs_list"]))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
