"""The console's rollup of runs per minute (engine/rollup.py, store/stats.py,
models/stats.py): a replica with a worker counts what the run history shows, tenant by
tenant; counts the database refused are written by the next flush; maintenance prunes
old minutes; quantiles are read from the lag buckets no more precisely than they are.

On a database of this module's own (run_minutes is not emptied between tests), and one
per test where a test renames a table.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc import store
from scheduler_svc.app import create_app
from scheduler_svc.config import Settings
from scheduler_svc.engine import maintenance
from scheduler_svc.engine.executor import Executor
from scheduler_svc.engine.rollup import RunStats
from scheduler_svc.engine.scheduler import tick_once
from scheduler_svc.engine.worker import Worker
from scheduler_svc.models import (
    LAG_BUCKETS_MS,
    ClaimedRun,
    MinuteStats,
    RunResult,
    lag_bucket,
    lag_quantile,
)
from scheduler_svc.store import db, migrate
from scheduler_svc.targets import Deliverer, HandlerContext
from scheduler_svc.targets.http import WebhookClient
from tests.factories import make_job
from tests.helpers import LOOPBACK, scratch_database, serving
from tests.replicas import eventually
from tests.webhook_receiver import Reply, WebhookReceiver

pytestmark = pytest.mark.timeout(60)

BUCKETS = len(LAG_BUCKETS_MS)
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def rollup_url(postgres_server_url: str) -> AsyncIterator[str]:
    """This module's database, with the schema applied."""
    async with scratch_database(postgres_server_url, "scheduler_rollup") as url:
        await _migrate(url)
        yield url


@pytest.fixture(scope="module")
async def rollup_pool(rollup_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await db.create_pool(rollup_url)
    yield pool
    await pool.close()


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(db.connect_options(url)[0])
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()


def tenant_name() -> str:
    """A tenant no other test counts runs of."""
    return f"rollup-{secrets.token_hex(4)}"


class Clock:
    """A clock the test moves (RunStats' minutes follow it)."""

    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def claimed(tenant: str, lag_s: float, *, run_id: int = 1, attempt: int = 1) -> ClaimedRun:
    """A scheduled run leased `lag_s` after its tick."""
    return ClaimedRun(
        id=run_id,
        job_id=1,
        tenant=tenant,
        scheduled_for=T0,
        trigger="schedule",
        attempt=attempt,
        started_at=T0 + timedelta(seconds=lag_s),
        lost_worker=None,
        name="job",
        attributes={},
        target={"type": "log"},
        timeout_s=30,
        max_attempts=3,
        backoff_s=0,
        backoff_max_s=0,
    )


def result(run_id: int, status: Any) -> RunResult:
    return RunResult(
        run_id=run_id,
        status=status,
        delay_s=0.0 if status == "pending" else None,
        error=None,
        output=None,
        duration_ms=1.0,
    )


def lags(**at_bucket: int) -> tuple[int, ...]:
    """A histogram: counts at bucket indexes given as b<i>=count."""
    counts = [0] * BUCKETS
    for name, count in at_bucket.items():
        counts[int(name[1:])] = count
    return tuple(counts)


async def totals(pool: Any, tenant: str) -> MinuteStats | None:
    """The tenant's rollup of the last hour, summed over its minutes (None: no row)."""
    since = await pool.fetchval("SELECT now() - interval '1 hour'")
    minutes = await store.run_minutes_read(pool, tenant, since)
    if not minutes:
        return None
    return MinuteStats(
        minute=minutes[0].minute,
        succeeded=sum(m.succeeded for m in minutes),
        failed=sum(m.failed for m in minutes),
        skipped=sum(m.skipped for m in minutes),
        cancelled=sum(m.cancelled for m in minutes),
        retried=sum(m.retried for m in minutes),
        lag_counts=tuple(sum(c) for c in zip(*(m.lag_counts for m in minutes), strict=True)),
    )


HISTORY = """
SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'skipped') AS skipped,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       coalesce(sum(greatest(attempt - 1, 0)), 0) AS retried,
       count(*) FILTER (WHERE trigger = 'schedule' AND started_at IS NOT NULL) AS first_attempts,
       count(*) FILTER (WHERE status IN ('pending', 'running')) AS unfinished
FROM job_runs WHERE tenant = $1
"""
RUNS = "SELECT status FROM job_runs WHERE job_id = $1 ORDER BY scheduled_for"


async def counted_as_in_history(pool: Any, tenant: str) -> tuple[asyncpg.Record, MinuteStats]:
    """Once the tenant's runs have ended, the history's counts and the rollup's, once the
    rollup shows the same outcomes and retries (its flushes come every few seconds)."""

    async def settled() -> asyncpg.Record | None:
        history: asyncpg.Record = await pool.fetchrow(HISTORY, tenant)
        return history if history["unfinished"] == 0 else None

    history = await eventually(settled, 20, f"the runs of {tenant} to end")
    wanted = tuple(history[k] for k in ("succeeded", "failed", "skipped", "cancelled", "retried"))

    async def counted() -> MinuteStats | None:
        rollup = await totals(pool, tenant)
        if rollup is None:
            return None
        seen = (rollup.succeeded, rollup.failed, rollup.skipped, rollup.cancelled, rollup.retried)
        return rollup if seen == wanted else None

    try:
        return history, await eventually(counted, 20, f"the rollup of {tenant} to catch up")
    except AssertionError:
        rollup = await totals(pool, tenant)
        assert rollup is not None, f"no rollup of {tenant}"
        seen = (rollup.succeeded, rollup.failed, rollup.skipped, rollup.cancelled, rollup.retried)
        assert seen == wanted  # shows how they differ
        raise


# --- buckets and quantiles ----------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (-2.0, 0),  # the clock stepped back
        (0.0, 0),
        (0.001, 0),  # on a bound: that bound's bucket
        (0.0011, 1),
        (0.05, 5),
        (0.0501, 6),
        (1.0, 9),
        (59.9, 14),
        (60.0, 14),
        (60.001, 15),
        (86400.0, 15),
    ],
)
def test_a_lag_falls_in_the_first_bucket_whose_bound_it_does_not_pass(
    seconds: float, bucket: int
) -> None:
    assert lag_bucket(seconds) == bucket


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        ([], 0.5, None),
        ([0] * BUCKETS, 0.99, None),
        (lags(b0=10), 0.5, 0.001),
        # 99 lags of at most 5 ms and one of at most 1 s.
        (lags(b2=99, b9=1), 0.5, 0.005),
        (lags(b2=99, b9=1), 0.99, 0.005),
        (lags(b2=99, b9=1), 1.0, 1.0),
        (lags(b2=98, b9=2), 0.99, 1.0),
        (lags(b2=1, b9=1), 0.5, 0.005),  # the nearest rank: the first of two
        (lags(b3=5, b6=5), 0.0, 0.01),  # the smallest
        (lags(b14=3), 0.5, 60.0),
        (lags(b2=1, b15=3), 0.5, math.inf),  # over 60 s: by how much is unknown
        ([0] * BUCKETS + [4], 0.5, math.inf),  # counts of buckets this release lacks
        ((0, 3), 0.5, 0.002),  # a tuple, as MinuteStats holds them
    ],
)
def test_a_quantile_is_the_upper_bound_of_the_bucket_it_falls_in(
    counts: list[int], q: float, expected: float | None
) -> None:
    assert lag_quantile(counts, q) == expected


@pytest.mark.parametrize("q", [-0.1, 1.01, math.nan])
def test_a_quantile_outside_zero_to_one_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        lag_quantile(lags(b0=1), q)


# --- counting and flushing ----------------------------------------------------------


async def test_counts_are_added_per_tenant_minute_and_worker_and_read_summed_over_workers(
    rollup_pool: Any,
) -> None:
    one, two = tenant_name(), tenant_name()
    clock = Clock(datetime.now(UTC).replace(second=10, microsecond=0) - timedelta(minutes=5))
    first = RunStats(rollup_pool, "replica-a", clock=clock)
    second = RunStats(rollup_pool, "replica-b", clock=clock)
    first.leased([claimed(one, 0.003, run_id=1), claimed(one, 0.3, run_id=2)])
    first.leased([claimed(one, 9.0, run_id=3, attempt=2)])  # a retry's start is no lag
    first.recorded(
        [
            (result(1, "succeeded"), claimed(one, 0, run_id=1)),
            (result(2, "pending"), claimed(one, 0, run_id=2)),  # to be retried
            (result(7, "succeeded"), None),  # a run this executor does not know
        ],
        {1, 2, 7},
    )
    # Not recorded: the run was cancelled, or another replica took it over.
    first.recorded([(result(4, "failed"), claimed(two, 0, run_id=4))], {1})
    first.cancelled(two, 1)
    assert await first.flush()
    assert await first.flush()  # nothing new: nothing written
    # Later in the same minute, and in the next.
    first.recorded([(result(2, "failed"), claimed(one, 0, run_id=2))], {2})
    first.leased([claimed(one, 0.003, run_id=5)])
    second.skipped(one)
    second.leased([claimed(two, 120.0, run_id=6)])
    clock.now += 60
    first.recorded([(result(5, "succeeded"), claimed(one, 0, run_id=5))], {5})
    assert await first.flush()
    assert await second.flush()

    since = datetime.fromtimestamp(clock.now, UTC) - timedelta(minutes=2)
    minute = datetime.fromtimestamp(clock.now // 60 * 60 - 60, UTC)
    assert await store.run_minutes_read(rollup_pool, one, since) == [
        MinuteStats(
            minute=minute,
            succeeded=1,
            failed=1,
            skipped=1,
            cancelled=0,
            retried=1,
            lag_counts=lags(b2=2, b8=1),
        ),
        MinuteStats(
            minute=minute + timedelta(minutes=1),
            succeeded=1,
            failed=0,
            skipped=0,
            cancelled=0,
            retried=0,
            lag_counts=lags(),
        ),
    ]
    assert await store.run_minutes_read(rollup_pool, two, since) == [
        MinuteStats(
            minute=minute,
            succeeded=0,
            failed=0,
            skipped=0,
            cancelled=1,
            retried=0,
            lag_counts=lags(b15=1),
        )
    ]
    rows = await rollup_pool.fetch(
        "SELECT worker, count(*) AS n FROM run_minutes WHERE tenant = $1 GROUP BY 1 ORDER BY 1",
        one,
    )
    assert [(r["worker"], r["n"]) for r in rows] == [("replica-a", 2), ("replica-b", 1)]


async def test_counts_the_database_refused_are_written_by_the_next_flush(
    postgres_server_url: str,
) -> None:
    tenant = tenant_name()
    clock = Clock(datetime.now(UTC).replace(second=0, microsecond=0))
    async with scratch_database(postgres_server_url, "scheduler_rollup_refused") as url:
        await _migrate(url)
        pool = await db.create_pool(url)
        try:
            stats = RunStats(pool, "replica-a", clock=clock)
            stats.leased([claimed(tenant, 0.0004)])
            stats.cancelled(tenant, 1)
            await pool.execute("ALTER TABLE run_minutes RENAME TO run_minutes_away")
            assert not await stats.flush()
            assert stats.unwritten == 2
            stats.cancelled(tenant, 1)  # counted while the first two wait
            assert not await stats.flush()
            assert stats.unwritten == 3
            await pool.execute("ALTER TABLE run_minutes_away RENAME TO run_minutes")
            assert await stats.flush()
            assert stats.unwritten == 0
            since = datetime.fromtimestamp(clock.now, UTC)
            [minute] = await store.run_minutes_read(pool, tenant, since)
            assert (minute.cancelled, minute.lag_counts) == (2, lags(b0=1))
        finally:
            await pool.close()


async def test_refused_counts_older_than_an_hour_are_dropped(postgres_server_url: str) -> None:
    tenant = tenant_name()
    clock = Clock(datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2))
    async with scratch_database(postgres_server_url, "scheduler_rollup_dropped") as url:
        await _migrate(url)
        pool = await db.create_pool(url)
        try:
            stats = RunStats(pool, "replica-a", clock=clock)
            stats.cancelled(tenant, 1)
            await pool.execute("ALTER TABLE run_minutes RENAME TO run_minutes_away")
            assert not await stats.flush()
            clock.now += 90 * 60  # the outage lasts
            stats.skipped(tenant)
            assert not await stats.flush()
            assert stats.unwritten == 1  # the skip; the cancel of 90 minutes ago went
            await pool.execute("ALTER TABLE run_minutes_away RENAME TO run_minutes")
            assert await stats.flush()
            since = datetime.fromtimestamp(clock.now, UTC) - timedelta(hours=3)
            [minute] = await store.run_minutes_read(pool, tenant, since)
            assert (minute.skipped, minute.cancelled) == (1, 0)
        finally:
            await pool.close()


async def test_maintenance_prunes_only_minutes_older_than_a_day(rollup_pool: Any) -> None:
    tenant = tenant_name()
    now: datetime = await rollup_pool.fetchval("SELECT date_trunc('minute', now())")
    ages = [timedelta(hours=25), timedelta(hours=23, minutes=59), timedelta(0)]
    rows = [
        (
            tenant,
            MinuteStats(
                minute=now - age,
                succeeded=1,
                failed=0,
                skipped=0,
                cancelled=0,
                retried=0,
                lag_counts=lags(),
            ),
        )
        for age in ages
    ]
    await store.run_minutes_add(rollup_pool, "replica-a", rows)
    done = await maintenance.maintain_once(rollup_pool, retention_days=30)
    assert done.locked
    assert done.minutes_pruned >= 1
    left = await store.run_minutes_read(rollup_pool, tenant, now - timedelta(days=2))
    assert [m.minute for m in left] == [now - ages[1], now]


async def test_prune_deletes_nothing_without_the_maintenance_lock(rollup_pool: Any) -> None:
    tenant = tenant_name()
    old: datetime = await rollup_pool.fetchval("SELECT now() - interval '2 days'")
    stats = MinuteStats(
        minute=old, succeeded=1, failed=0, skipped=0, cancelled=0, retried=0, lag_counts=lags()
    )
    await store.run_minutes_add(rollup_pool, "replica-a", [(tenant, stats)])
    async with rollup_pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT pg_advisory_xact_lock($1)", maintenance.MAINTENANCE_LOCK_KEY)
        assert await store.run_minutes_prune(rollup_pool, 24, maintenance.MAINTENANCE_LOCK_KEY) == 0
    assert await store.run_minutes_prune(rollup_pool, 24, maintenance.MAINTENANCE_LOCK_KEY) >= 1


async def test_a_pass_counts_the_ticks_it_skips(rollup_pool: Any) -> None:
    tenant = tenant_name()
    stats = RunStats(rollup_pool, "rollup-pass")
    job = await make_job(
        rollup_pool, tenant=tenant, schedule="@every 10s", next_run_at=T0, overlap="forbid"
    )
    await tick_once(rollup_pool, now=T0, tenants=[tenant], stats=stats)  # pending: nobody runs it
    await tick_once(rollup_pool, now=T0 + timedelta(seconds=10), tenants=[tenant], stats=stats)
    assert [r["status"] for r in await rollup_pool.fetch(RUNS, job.id)] == ["pending", "skipped"]
    assert await stats.flush()
    rollup = await totals(rollup_pool, tenant)
    assert rollup is not None
    assert (rollup.skipped, rollup.succeeded, sum(rollup.lag_counts)) == (1, 0, 0)


async def test_an_executor_counts_its_leases_results_and_the_waiting_runs_it_skips(
    rollup_pool: Any, http: WebhookClient
) -> None:
    """The executor's own exchange leases a tick (its lag), records its result, and skips
    the next tick, which waited for it and came due while it ran."""
    tenant = tenant_name()
    stats = RunStats(rollup_pool, "rollup-executor")
    entered, release = asyncio.Event(), asyncio.Event()

    async def hold(ctx: HandlerContext) -> None:
        entered.set()
        await release.wait()

    deliverer = Deliverer(http, allow_private=True, handlers={"hold": hold})
    ex = Executor(
        rollup_pool, deliverer, worker_id="rollup-executor", tenants=[tenant], stats=stats
    )
    first_tick = await store.db_now(rollup_pool) - timedelta(seconds=0.5)
    job = await make_job(
        rollup_pool,
        tenant=tenant,
        schedule="@every 1s",
        next_run_at=first_tick,
        overlap="forbid",
        target={"type": "handler", "name": "hold"},
    )
    await tick_once(rollup_pool, now=first_tick, tenants=[tenant], stats=stats)
    stop = asyncio.Event()
    loop = asyncio.create_task(ex.run(stop))
    try:
        await asyncio.wait_for(entered.wait(), 10)
        next_tick = first_tick + timedelta(seconds=1)
        await tick_once(rollup_pool, now=next_tick, tenants=[tenant], stats=stats)  # it waits

        async def past_next_tick() -> bool:
            return await store.db_now(rollup_pool) > next_tick

        await eventually(past_next_tick, 10, "the database clock to pass the next tick", 0.02)
        release.set()  # the run ends after the next tick came due: that tick overlapped

        async def settled() -> list[str] | None:
            statuses = [r["status"] for r in await rollup_pool.fetch(RUNS, job.id)]
            return statuses if statuses == ["succeeded", "skipped"] else None

        await eventually(settled, 10, "the first run to end and the second to be skipped")
    finally:
        stop.set()
        release.set()
        await loop
        await ex.drain(1.0)
    assert await stats.flush()
    history, rollup = await counted_as_in_history(rollup_pool, tenant)
    assert (history["succeeded"], history["skipped"], history["first_attempts"]) == (1, 1, 1)
    assert sum(rollup.lag_counts) == 1
    # Its later ticks are no business of this module's other tests.
    await rollup_pool.execute("UPDATE jobs SET status = 'paused' WHERE id = $1", job.id)


async def test_a_worker_of_its_own_writes_its_last_counts_as_it_stops(
    rollup_url: str, rollup_pool: Any, make_settings: Any, http: WebhookClient
) -> None:
    """A worker given no RunStats keeps its own, and flushes it after its drain: the
    counts are there at once, not at the next flush of a loop that has stopped."""
    tenant = tenant_name()
    settings: Settings = make_settings(
        database_url=rollup_url,
        role="worker",
        worker_id="rollup-own-worker",
        tenants=(tenant,),
        shutdown_grace_s=1.0,
    )
    worker = Worker(settings, rollup_pool, Deliverer(http, allow_private=True))
    now = await store.db_now(rollup_pool)
    job = await make_job(
        rollup_pool, tenant=tenant, schedule=f"@at {now.isoformat()}", next_run_at=now
    )
    worker.start()
    try:

        async def ran() -> bool:
            return [r["status"] for r in await rollup_pool.fetch(RUNS, job.id)] == ["succeeded"]

        await eventually(ran, 10, "the job's one run")
    finally:
        await worker.stop()
    rollup = await totals(rollup_pool, tenant)
    assert rollup is not None
    assert (rollup.succeeded, sum(rollup.lag_counts)) == (1, 1)


# --- a replica ----------------------------------------------------------------------


async def test_a_replica_counts_per_tenant_what_the_run_history_shows(
    rollup_url: str,
    rollup_pool: Any,
    make_settings: Any,
    http: WebhookClient,
    receiver: WebhookReceiver,
) -> None:
    # Open mode: the API's tenant is "default"; this module's database has no other runs.
    default, other = "default", tenant_name()
    receiver.reply_on("/fail", *[Reply(status=500)] * 100)
    receiver.reply_on("/hold", Reply(hold=True))
    now: datetime = await rollup_pool.fetchval("SELECT now()")
    once = f"@at {now.isoformat()}"
    ok = {"type": "http", "url": receiver.url("/ok")}
    failing = {"type": "http", "url": receiver.url("/fail")}
    # The worker's LISTEN connection opens on settings.database_url: this module's database.
    settings: Settings = make_settings(
        database_url=rollup_url,
        role="all",
        worker_id="rollup-replica",
        webhook_allow_private=True,
        shutdown_grace_s=1.0,
    )
    app = create_app(settings, pool=rollup_pool, http=http)
    async with (
        serving(app, "the rollup replica", lifespan="on") as port,
        httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}", timeout=10) as client,
    ):
        for tenant, logs, oks, fails in [(default, 3, 2, 2), (other, 2, 0, 1)]:
            for target, count in [({"type": "log"}, logs), (ok, oks), (failing, fails)]:
                for _ in range(count):
                    await make_job(
                        rollup_pool,
                        tenant=tenant,
                        schedule=once,
                        next_run_at=now,
                        target=target,
                        max_attempts=3,
                        backoff_s=0,
                    )
        # A run cancelled while its attempt is under way: its late result is not counted.
        job = await make_job(
            rollup_pool, next_run_at=None, paused=True, target={**ok, "url": receiver.url("/hold")}
        )
        triggered = await client.post(f"/jobs/{job.id}/trigger")
        assert triggered.status_code == 202, triggered.text
        await receiver.wait_until(lambda rs: any(r.path == "/hold" for r in rs), timeout=10)
        cancelled = await client.post(f"/runs/{triggered.json()['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        receiver.release()

        for tenant in (default, other):
            history, rollup = await counted_as_in_history(rollup_pool, tenant)
            assert sum(rollup.lag_counts) == history["first_attempts"]

        default_history = await rollup_pool.fetchrow(HISTORY, default)
        other_history = await rollup_pool.fetchrow(HISTORY, other)
        # What the jobs came to, so that the equalities above are about something.
        assert dict(default_history) == {
            "succeeded": 5,
            "failed": 2,
            "skipped": 0,
            "cancelled": 1,
            "retried": 4,
            "first_attempts": 7,
            "unfinished": 0,
        }
        assert dict(other_history) == {
            "succeeded": 2,
            "failed": 1,
            "skipped": 0,
            "cancelled": 0,
            "retried": 2,
            "first_attempts": 3,
            "unfinished": 0,
        }
