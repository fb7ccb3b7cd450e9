"""What an alert costs the engine's statements: the executors' exchange that records
outcomes (run.failed, job.recovered written in it), the scheduler's materializing of
overlap-skipped ticks (job.missed written in it), and the sender's missed-tick check.

    python -m bench.alerts [--batch 100] [--rounds 200] [--unfinished 0 1000 10000]

Each statement runs on a fresh database through the store's own functions, `--rounds`
times per variant with a batch of `--batch` runs, committed as the engine does; the table
gives the median and p99 per statement and, where alerts are written, the cost of one
alert (the difference from the same statement writing none, per alert).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import Result, bench_database, ms, percentile
from scheduler_svc import store
from scheduler_svc.models import RunResult
from scheduler_svc.store import Advance, Tick, db

WORKER = "bench-worker"
MAKE_JOBS = """
INSERT INTO jobs (tenant, name, schedule, next_run_at, status, overlap)
SELECT 'bench', 'job-' || i, '@every 1s', NULL, 'paused', 'forbid'
FROM generate_series(1, $1) AS i
RETURNING id
"""
# Runs leased to the bench's worker, one per job, at distinct ticks, as an exchange
# finds them when it records their results.
LEASE_RUNS = """
INSERT INTO job_runs (id, job_id, tenant, scheduled_for, status, attempt, worker,
                      started_at, lease_expires_at, next_attempt_at)
SELECT run_id(t), j, 'bench', t, 'running', 1, $3, now(), now() + interval '1 h', t
FROM unnest($1::bigint[]) AS j, LATERAL (SELECT $2::timestamptz AS t) tick
RETURNING id
"""


def _stats(seconds: list[float]) -> dict[str, float]:
    values = [s * 1000 for s in seconds]
    return {"p50": percentile(values, 50), "p99": percentile(values, 99)}


async def _exchange(
    pool: Any, job_ids: list[int], rounds: int, status: str, operator_alerts: bool, base: datetime
) -> dict[str, float]:
    """Record `status` for a batch of leased runs, `rounds` times."""
    timings = []
    for i in range(rounds):
        tick = base + timedelta(seconds=i)
        run_ids = [r["id"] for r in await pool.fetch(LEASE_RUNS, job_ids, tick, WORKER)]
        results = [
            RunResult(
                run_id=run_id,
                status=status,  # type: ignore[arg-type]
                delay_s=None,
                error="503 from the target" if status == "failed" else None,
                output=None,
                duration_ms=1.0,
            )
            for run_id in run_ids
        ]
        started = time.perf_counter()
        exchange = await store.runs_exchange(
            pool, WORKER, results, 0, 10.0, leases=False, operator_alerts=operator_alerts
        )
        timings.append(time.perf_counter() - started)
        assert len(exchange.recorded) == len(run_ids)
    return _stats(timings)


async def _materialize(
    pool: Any, job_ids: list[int], rounds: int, operator_alerts: bool, base: datetime
) -> dict[str, float]:
    """A scheduler pass's statement inserting a batch of overlap-skipped ticks."""
    timings = []
    for i in range(rounds):
        tick = base + timedelta(seconds=i)
        ticks = [Tick(j, "bench", tick, "skipped", "an earlier run was running") for j in job_ids]
        advances = [Advance(j, None, "paused") for j in job_ids]
        started = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction():
            await store.runs_materialize(
                conn, advances, ticks, None, operator_alerts=operator_alerts
            )
        timings.append(time.perf_counter() - started)
    return _stats(timings)


async def _missed_check(unfinished: int, late: int, rounds: int) -> dict[str, float]:
    """The sender's missed-tick check with `unfinished` pending runs of which `late` are
    past their deadline: the first call writes their alerts, the others find them."""
    async with bench_database() as check_url:
        pool = await db.create_pool(check_url, max_size=2)
        try:
            await pool.execute(
                "INSERT INTO jobs (tenant, name, schedule, next_run_at, status, timeout_s)"
                " SELECT 'bench', 'job-' || i, '@every 1h', now() + interval '1 h', 'active', 30"
                " FROM generate_series(1, $1) AS i",
                max(unfinished, 1),
            )
            await pool.execute(
                "INSERT INTO job_runs (id, job_id, tenant, scheduled_for, status, next_attempt_at)"
                " SELECT run_id(t), j.id, 'bench', t, 'pending', t + interval '1 h'"
                " FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs) j,"
                "      LATERAL (SELECT CASE WHEN j.n <= $2 THEN now() - interval '10 min'"
                "                           ELSE now() END AS t) tick"
                " WHERE j.n <= $1",
                unfinished,
                late,
            )
            await pool.execute("VACUUM ANALYZE jobs, job_runs")
            timings = []
            for _ in range(rounds):
                started = time.perf_counter()
                made = await store.alerts_check_missed(pool, True, 0, None)
                timings.append(time.perf_counter() - started)
                assert made is not None
            alerts = await pool.fetchval("SELECT count(*) FROM alerts")
            assert alerts == min(late, unfinished), alerts
        finally:
            await pool.close()
    return _stats(timings[1:])


async def measure(batch: int, rounds: int, unfinished: list[int]) -> Result:
    rows: list[list[object]] = []
    figures: dict[str, object] = {"batch": batch, "rounds": rounds}
    async with bench_database() as url:
        pool = await db.create_pool(url, max_size=2, durable=False)
        try:
            job_ids = [r["id"] for r in await pool.fetch(MAKE_JOBS, batch)]
            base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

            async def exchange(label: str, status: str, alerts: bool, offset: int) -> float:
                stats = await _exchange(
                    pool, job_ids, rounds, status, alerts, base + timedelta(hours=offset)
                )
                figures[label] = stats
                return stats["p50"]

            quiet = await exchange("exchange_succeeded", "succeeded", False, 0)
            await exchange("exchange_succeeded_alerts_on", "succeeded", True, 1)
            failed_quiet = await exchange("exchange_failed_no_alert", "failed", False, 2)
            failed_loud = await exchange("exchange_failed_alerted", "failed", True, 3)
            await pool.execute("DELETE FROM jobs_failing")
            await pool.execute(
                "INSERT INTO jobs_failing (job_id) SELECT unnest($1::bigint[])", job_ids
            )
            # Each round's successes follow a failure: the first is job.recovered.
            recovered = []
            for i in range(rounds):
                recovered.append(
                    (
                        await _exchange(
                            pool,
                            job_ids,
                            1,
                            "succeeded",
                            True,
                            base + timedelta(hours=4, seconds=i),
                        )
                    )["p50"]
                )
                await pool.execute(
                    "INSERT INTO jobs_failing (job_id) SELECT unnest($1::bigint[])", job_ids
                )
            figures["exchange_recovered_alerted"] = {"p50": percentile(recovered, 50)}
            alerts_written = await pool.fetchval("SELECT count(*) FROM alerts")
            for label in (
                "exchange_succeeded",
                "exchange_succeeded_alerts_on",
                "exchange_failed_no_alert",
                "exchange_failed_alerted",
            ):
                stats = figures[label]
                assert isinstance(stats, dict)
                rows.append([label, batch, ms(stats["p50"]), ms(stats["p99"]), ""])
            per_alert = (failed_loud - failed_quiet) / batch * 1000
            rows[-1][-1] = f"{per_alert:.0f} µs"
            rows.append(
                [
                    "exchange_recovered_alerted",
                    batch,
                    ms(percentile(recovered, 50)),
                    "",
                    f"{(percentile(recovered, 50) - quiet) / batch * 1000:.0f} µs",
                ]
            )
            skipped_quiet = await _materialize(
                pool, job_ids, rounds, False, base + timedelta(hours=6)
            )
            skipped_loud = await _materialize(
                pool, job_ids, rounds, True, base + timedelta(hours=7)
            )
            figures["materialize_skipped"] = skipped_quiet
            figures["materialize_skipped_alerted"] = skipped_loud
            rows.append(
                [
                    "materialize_skipped",
                    batch,
                    ms(skipped_quiet["p50"]),
                    ms(skipped_quiet["p99"]),
                    "",
                ]
            )
            rows.append(
                [
                    "materialize_skipped_alerted",
                    batch,
                    ms(skipped_loud["p50"]),
                    ms(skipped_loud["p99"]),
                    f"{(skipped_loud['p50'] - skipped_quiet['p50']) / batch * 1000:.0f} µs",
                ]
            )
            figures["alerts_written"] = alerts_written
        finally:
            await pool.close()
        for count in unfinished:
            late = min(100, count)
            stats = await _missed_check(count, late, rounds)
            figures[f"missed_check_{count}"] = stats
            rows.append(
                [
                    f"missed check, {count} unfinished ({late} late)",
                    1,
                    ms(stats["p50"]),
                    ms(stats["p99"]),
                    "",
                ]
            )
    return Result(
        "What alerts cost (ms per statement; the last column: per alert written)",
        ["statement", "runs", "p50 ms", "p99 ms", "per alert"],
        rows,
        figures,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--unfinished", type=int, nargs="+", default=[0, 1000, 10000])
    args = parser.parse_args()
    result = asyncio.run(measure(args.batch, args.rounds, args.unfinished))
    print(result.table())


if __name__ == "__main__":
    main()
