"""The scheduler pass against a real database: one run per tick, misfires, overlap, DST."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import pytest
import structlog

from scheduler_svc import store
from scheduler_svc.engine.scheduler import (
    BUSY_PASS_GAP_S,
    BUSY_PASS_JOBS,
    OVERLAP_SKIPPED,
    PASS_GAP_S,
    Scheduler,
    tick_once,
)
from scheduler_svc.models import ClaimedRun, DueJob
from scheduler_svc.store.history_ids import BEFORE_ALL
from tests.factories import make_job, runs_of

T0 = datetime(2031, 3, 4, 12, 0, 0, tzinfo=UTC)


# Every test here starts from empty tables.
pytestmark = pytest.mark.usefixtures("clean")


async def test_due_tick_becomes_one_pending_run_and_the_job_advances(pool: Any) -> None:
    job = await make_job(pool, schedule="@every 10s", next_run_at=T0)
    result = await tick_once(pool, now=T0 + timedelta(seconds=1))
    assert (result.jobs, result.runs) == (1, 1)
    [run] = await runs_of(pool, job.id)
    assert (run.scheduled_for, run.status, run.trigger, run.attempt) == (
        T0,
        "pending",
        "schedule",
        0,
    )
    advanced = await store.job_get(pool, "default", job.id)
    assert advanced is not None
    assert advanced.next_run_at == T0 + timedelta(seconds=10)


async def test_job_not_yet_due_is_left_alone(pool: Any) -> None:
    job = await make_job(pool, next_run_at=T0)
    assert (await tick_once(pool, now=T0 - timedelta(microseconds=1))).jobs == 0
    assert await runs_of(pool, job.id) == []


async def test_a_replica_scoped_to_tenants_claims_their_jobs_and_runs_only(pool: Any) -> None:
    """SCHEDULER_TENANTS: the seam for tenant-sharded deployments (docs/scaling.md)."""
    for tenant in ("a", "b", "c"):
        await make_job(pool, next_run_at=T0, tenant=tenant)
    scoped = await tick_once(pool, now=T0, tenants=["a", "c"])
    assert scoped.jobs == 2
    ran = await pool.fetch("SELECT tenant FROM job_runs ORDER BY tenant")
    assert [r["tenant"] for r in ran] == ["a", "c"]
    assert (await tick_once(pool, now=T0)).jobs == 1  # b's, by an unscoped replica
    await pool.execute("UPDATE job_runs SET next_attempt_at = now()")  # T0 is years ahead
    exchange = await store.runs_exchange(pool, "scoped", [], 10, 10, tenants=["b"])
    assert [run.tenant for run in exchange.leased] == ["b"]
    rest = await store.runs_exchange(pool, "any", [], 10, 10)
    assert sorted(run.tenant for run in rest.leased) == ["a", "c"]


async def test_paused_jobs_are_not_claimed(pool: Any) -> None:
    await make_job(pool, next_run_at=None, paused=True)
    assert (await tick_once(pool, now=T0)).jobs == 0


async def test_after_a_busy_pass_the_next_waits_longer_but_never_past_a_due_tick(
    pool: Any,
) -> None:
    scheduler = Scheduler(pool)
    # A job is overdue: the next pass comes after the gap, longer after a busy pass.
    await make_job(pool, next_run_at=datetime.now(UTC) - timedelta(seconds=1))
    assert await scheduler._sleep_s(BUSY_PASS_JOBS - 1) == PASS_GAP_S
    assert await scheduler._sleep_s(BUSY_PASS_JOBS) == BUSY_PASS_GAP_S
    # Nothing due for a while: the due time decides, whatever the last pass did.
    await pool.execute("UPDATE jobs SET next_run_at = now() + interval '3 seconds'")
    for jobs in (0, BUSY_PASS_JOBS):
        assert 2 < await scheduler._sleep_s(jobs) <= 3


async def test_racing_passes_materialize_every_tick_exactly_once(pool: Any) -> None:
    jobs = [await make_job(pool, schedule="@every 1s", next_run_at=T0) for _ in range(60)]
    now = T0 + timedelta(seconds=5)
    # Six passes at once on separate connections, with small batches so they interleave.
    results = await asyncio.gather(*(tick_once(pool, batch=7, now=now) for _ in range(6)))
    while any(r.full for r in results):
        results = await asyncio.gather(*(tick_once(pool, batch=7, now=now) for _ in range(6)))
    rows = await pool.fetch("SELECT job_id, scheduled_for FROM job_runs")
    per_tick = Counter((r["job_id"], r["scheduled_for"]) for r in rows)
    assert per_tick and max(per_tick.values()) == 1
    # Every job got its six on-time ticks (T0 … T0+5s), nothing more, nothing less.
    assert len(per_tick) == 60 * 6
    for job in jobs:
        ticks = sorted(t for (job_id, t) in per_tick if job_id == job.id)
        assert ticks == [T0 + timedelta(seconds=i) for i in range(6)]


async def test_unique_tick_constraint_drops_a_second_materialization(pool: Any) -> None:
    job = await make_job(pool, next_run_at=T0)
    await tick_once(pool, now=T0)
    # Someone rewinds the job (a stale replica, a restore): the tick is not run twice.
    await pool.execute("UPDATE jobs SET next_run_at = $1", T0)
    result = await tick_once(pool, now=T0)
    assert (result.jobs, result.runs) == (1, 0)
    assert len(await runs_of(pool, job.id)) == 1


@pytest.mark.parametrize(
    ("policy", "expected_ticks"),
    [
        # Down for an hour, every minute, grace 60 s: only the last minute is on time.
        ("run_once", [T0 + timedelta(minutes=59), T0 + timedelta(minutes=60)]),
        ("skip", [T0 + timedelta(minutes=60)]),
        ("run_all", [T0 + timedelta(minutes=m) for m in range(61)]),
    ],
)
async def test_misfire_policy_after_downtime(
    pool: Any, policy: str, expected_ticks: list[datetime]
) -> None:
    job = await make_job(
        pool, schedule="* * * * *", next_run_at=T0, misfire_policy=policy, misfire_grace_s=60
    )
    now = T0 + timedelta(minutes=60, seconds=30)
    await tick_once(pool, now=now)
    assert [r.scheduled_for for r in await runs_of(pool, job.id)] == expected_ticks
    advanced = await store.job_get(pool, "default", job.id)
    assert advanced is not None and advanced.next_run_at == T0 + timedelta(minutes=61)


async def test_run_all_runs_at_most_a_hundred_missed_ticks(pool: Any) -> None:
    job = await make_job(pool, schedule="@every 1s", next_run_at=T0, misfire_policy="run_all")
    await tick_once(pool, now=T0 + timedelta(hours=1))
    runs = await runs_of(pool, job.id)
    assert len(runs) == 100
    assert runs[-1].scheduled_for == T0 + timedelta(hours=1)  # the latest are kept


async def test_overlap_forbid_records_a_skipped_run_with_the_reason(pool: Any) -> None:
    job = await make_job(pool, schedule="@every 10s", next_run_at=T0, overlap="forbid")
    await tick_once(pool, now=T0)  # first tick: pending, nobody runs it
    await tick_once(pool, now=T0 + timedelta(seconds=10))
    first, second = await runs_of(pool, job.id)
    assert first.status == "pending"
    assert (second.status, second.error) == ("skipped", OVERLAP_SKIPPED)
    assert second.finished_at is not None


async def test_overlap_forbid_backlog_of_a_pass_waits_behind_its_first_tick(pool: Any) -> None:
    # Ticks that came due while nothing of the job ran are not overlaps (§3.7): the
    # first is pending, the others wait for it, to run one at a time in tick order.
    job = await make_job(
        pool, schedule="@every 1s", next_run_at=T0, overlap="forbid", misfire_policy="run_all"
    )
    await tick_once(pool, now=T0 + timedelta(seconds=3))
    runs = await runs_of(pool, job.id)
    assert [(r.status, r.next_attempt_at is None) for r in runs] == [("pending", False)] + [
        ("pending", True)
    ] * 3
    # The first runs late, after the next tick came due: catch-up (overlap.py).
    catch_up = await pool.fetchval("SELECT catch_up FROM job_runs WHERE id = $1", runs[0].id)
    assert catch_up is True
    # A tick that runs on time is not.
    punctual = await make_job(pool, schedule="@every 10s", next_run_at=T0, overlap="forbid")
    await tick_once(pool, now=T0 + timedelta(seconds=1))
    [run] = await runs_of(pool, punctual.id)
    assert await pool.fetchval("SELECT catch_up FROM job_runs WHERE id = $1", run.id) is False


async def test_overlap_forbid_tick_waits_for_a_running_run_of_its_job(pool: Any) -> None:
    # The database says the earlier run is running; on its replica it may have ended
    # already, its result held up, so the tick waits for that run's outcome.
    job = await make_job(pool, schedule="@every 10s", next_run_at=T0, overlap="forbid")
    await tick_once(pool, now=T0)
    [first] = await runs_of(pool, job.id)
    await pool.execute(
        "UPDATE job_runs SET status = 'running', attempt = 1, worker = 'w1',"
        " started_at = now(), lease_expires_at = now() + interval '1 minute' WHERE id = $1",
        first.id,
    )
    await tick_once(pool, now=T0 + timedelta(seconds=10))
    _, second = await runs_of(pool, job.id)
    assert (second.status, second.next_attempt_at, second.attempt) == ("pending", None, 0)
    waits_for = await pool.fetchval("SELECT waits_for FROM job_runs WHERE id = $1", second.id)
    assert waits_for == first.id
    # A third tick waits too, and the backlog gauge counts both.
    await tick_once(pool, now=T0 + timedelta(seconds=20))
    assert [r.status for r in await runs_of(pool, job.id)] == ["running", "pending", "pending"]
    assert (await store.runs_due_backlog(pool)).ticks == 2


async def test_overlap_allow_queues_every_tick(pool: Any) -> None:
    job = await make_job(pool, schedule="@every 10s", next_run_at=T0, overlap="allow")
    await tick_once(pool, now=T0)
    await tick_once(pool, now=T0 + timedelta(seconds=10))
    assert [r.status for r in await runs_of(pool, job.id)] == ["pending", "pending"]


async def test_one_off_job_completes_after_its_tick(pool: Any) -> None:
    job = await make_job(pool, schedule="@at 2031-03-04T12:00:00Z", next_run_at=T0)
    await tick_once(pool, now=T0 + timedelta(seconds=2))
    done = await store.job_get(pool, "default", job.id)
    assert done is not None
    assert (done.status, done.next_run_at) == ("completed", None)
    assert len(await runs_of(pool, job.id)) == 1
    assert (await tick_once(pool, now=T0 + timedelta(days=1))).jobs == 0


async def test_scheduler_advance_does_not_wake_other_schedulers(
    pool: Any, database_url: str
) -> None:
    from scheduler_svc.store.db import connect_options

    listener = await asyncpg.connect(connect_options(database_url)[0])
    heard: list[str] = []
    got = asyncio.Event()

    def on_notify(*args: Any) -> None:
        heard.append(args[2])
        got.set()

    await listener.add_listener("scheduler_jobs", on_notify)
    await listener.add_listener("scheduler_runs", on_notify)
    try:
        await make_job(pool, next_run_at=T0)  # an API-like insert: wakes schedulers
        await asyncio.wait_for(got.wait(), 5)
        assert heard == ["scheduler_jobs"]
        heard.clear()
        got.clear()
        await tick_once(pool, now=T0)  # runs inserted: wakes executors, not schedulers
        await asyncio.wait_for(got.wait(), 5)
        await store.ping(listener)  # a round trip: any other notification has arrived
        assert heard == ["scheduler_runs"]
    finally:
        await listener.close()


async def _fire_times(pool: Any, job_id: int, until: datetime) -> list[datetime]:
    """Drive the scheduler through simulated time, pass after pass, up to `until`."""
    while True:
        job = await store.job_get(pool, "default", job_id)
        assert job is not None
        if job.next_run_at is None or job.next_run_at > until:
            break
        await tick_once(pool, now=job.next_run_at)
    return [r.scheduled_for for r in await runs_of(pool, job_id)]


NEW_YORK = ZoneInfo("America/New_York")


def local(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK, fold=fold).astimezone(UTC)


@pytest.mark.parametrize(
    ("schedule", "start", "until", "expected"),
    [
        # Fall back (2025-11-02, 02:00 EDT → 01:00 EST): 01:30 fires once, its first time.
        (
            "30 1 * * *",
            local(2025, 11, 1, 0, 0),
            local(2025, 11, 3, 12, 0),
            [local(2025, 11, 1, 1, 30), local(2025, 11, 2, 1, 30), local(2025, 11, 3, 1, 30)],
        ),
        # Spring forward (2025-03-09, 02:00 EST → 03:00 EDT): 02:30 does not exist and
        # fires at the first instant after the gap, 03:00 EDT.
        (
            "30 2 * * *",
            local(2025, 3, 8, 0, 0),
            local(2025, 3, 10, 12, 0),
            [
                local(2025, 3, 8, 2, 30),
                datetime(2025, 3, 9, 7, 0, tzinfo=UTC),
                local(2025, 3, 10, 2, 30),
            ],
        ),
    ],
)
async def test_dst_days_through_the_engine(
    pool: Any, schedule: str, start: datetime, until: datetime, expected: list[datetime]
) -> None:
    job = await make_job(
        pool, schedule=schedule, timezone="America/New_York", next_run_at=None, paused=True
    )
    from scheduler_svc import schedule as schedule_math

    first = schedule_math.next_fire(schedule_math.parse(schedule), NEW_YORK, start)
    await pool.execute("UPDATE jobs SET status = 'active', next_run_at = $1", first)
    assert await _fire_times(pool, job.id, until) == expected


@pytest.mark.parametrize(("day", "count"), [((2025, 11, 2), 25), ((2025, 3, 9), 23)])
async def test_hourly_cron_fires_every_real_hour_on_dst_days(
    pool: Any, day: tuple[int, int, int], count: int
) -> None:
    start = local(*day, 0, 0)
    end = local(day[0], day[1], day[2] + 1, 0, 0)
    job = await make_job(pool, schedule="0 * * * *", timezone="America/New_York", next_run_at=start)
    fires = [t for t in await _fire_times(pool, job.id, end) if t < end]
    assert len(fires) == count
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(fires))


# --- log-target ticks run by the pass itself ------------------------------------------

HTTP_TARGET = {"type": "http", "url": "https://example.com/hook"}


class FakeExecutor:
    """This replica's executor as a pass sees it, with `slots` free slots; it keeps the
    runs it is given instead of running them."""

    lease_margin_s = 5.0

    def __init__(self, worker_id: str, slots: int = 0) -> None:
        self.wake = asyncio.Event()
        self.worker_id = worker_id
        self.slots = slots
        self.held = 0
        self.adopted: list[ClaimedRun] = []

    def reserve(self, wanted: int) -> int:
        held = min(wanted, self.slots - self.held)
        self.held += held
        return held

    def adopt(self, runs: list[ClaimedRun], reserved: int) -> None:
        self.held -= reserved
        self.slots -= len(runs)
        self.adopted += runs


async def test_a_pass_with_a_worker_runs_log_ticks_itself_and_leaves_others_pending(
    pool: Any,
) -> None:
    logged = await make_job(
        pool, name="logged", attributes={"k": "v"}, schedule="@every 10s", next_run_at=T0
    )
    hooked = await make_job(pool, target=HTTP_TARGET, schedule="@every 10s", next_run_at=T0)
    with structlog.testing.capture_logs() as logs:
        result = await tick_once(pool, now=T0 + timedelta(seconds=1), executor=FakeExecutor("w-1"))
    assert (result.jobs, result.runs, result.for_executors) == (2, 2, True)

    [run] = await runs_of(pool, logged.id)
    assert (run.status, run.attempt, run.worker, run.duration_ms) == ("succeeded", 1, "w-1", 0)
    # Started when the pass inserted it (the real clock, not the injected `now`).
    assert run.started_at is not None and run.finished_at is not None
    assert run.created_at <= run.started_at <= run.finished_at
    [line] = [e for e in logs if e["event"] == "job_executed"]
    assert line == {
        "event": "job_executed",
        "log_level": "info",
        "job_id": logged.id,
        "job_name": "logged",
        "run_id": run.id,
        "tick": T0.isoformat(),
        "attempt": 1,
        "trigger": "schedule",
        "tenant": "default",
        "attributes": {"k": "v"},
        "worker": "w-1",
        "status": "succeeded",
        "duration_ms": 0,
    }
    [waiting] = await runs_of(pool, hooked.id)
    assert (waiting.status, waiting.attempt, waiting.worker) == ("pending", 0, None)
    # Nothing is left for an executor of the log job: only the webhook run is claimable
    # (once its tick, years ahead on the database's clock, is made due).
    await pool.execute("UPDATE job_runs SET next_attempt_at = now() WHERE status = 'pending'")
    leased = await store.runs_exchange(pool, "w-2", [], 10, 5.0)
    assert [r.id for r in leased.leased] == [waiting.id]


async def test_a_tick_already_materialized_is_not_run_again_by_a_pass(pool: Any) -> None:
    job = await make_job(pool, schedule="@every 10s", next_run_at=T0)
    await tick_once(pool, now=T0, executor=FakeExecutor("w-1"))
    # As if another replica had not seen the advance: the same tick is due again.
    await pool.execute("UPDATE jobs SET next_run_at = $1 WHERE id = $2", T0, job.id)
    with structlog.testing.capture_logs() as logs:
        result = await tick_once(pool, now=T0, executor=FakeExecutor("w-2"))
    assert (result.jobs, result.runs) == (1, 0)
    assert [e for e in logs if e["event"] == "job_executed"] == []
    assert [(r.status, r.worker) for r in await runs_of(pool, job.id)] == [("succeeded", "w-1")]


async def test_run_all_log_ticks_run_in_the_pass_do_not_overlap_each_other(pool: Any) -> None:
    job = await make_job(
        pool,
        schedule="@every 1s",
        next_run_at=T0,
        misfire_policy="run_all",
        misfire_grace_s=0,
        overlap="forbid",
    )
    await tick_once(pool, now=T0 + timedelta(seconds=4), executor=FakeExecutor("w-1"))
    runs = await runs_of(pool, job.id)
    assert [r.status for r in runs] == ["succeeded"] * 5
    # Left to executors, the same backlog runs one at a time: the first is pending, the
    # others wait for it; none is skipped.
    other = await make_job(
        pool,
        target=HTTP_TARGET,
        schedule="@every 1s",
        next_run_at=T0,
        misfire_policy="run_all",
        misfire_grace_s=0,
        overlap="forbid",
    )
    with structlog.testing.capture_logs() as logs:
        await tick_once(pool, now=T0 + timedelta(seconds=4), executor=FakeExecutor("w-1"))
    others = await runs_of(pool, other.id)
    assert [(r.status, r.next_attempt_at is None) for r in others] == [("pending", False)] + [
        ("pending", True)
    ] * 4
    assert [e for e in logs if e["event"] == "run_skipped"] == []


async def test_a_skipped_tick_says_so_in_the_log_with_its_ids_and_why(pool: Any) -> None:
    job = await make_job(pool, schedule="@every 10s", next_run_at=T0, overlap="forbid")
    await tick_once(pool, now=T0)  # pending, nobody runs it: the next tick overlaps it
    with structlog.testing.capture_logs() as logs:
        await tick_once(pool, now=T0 + timedelta(seconds=10))
    _, skipped = await runs_of(pool, job.id)
    assert skipped.status == "skipped"
    assert [(e["run_id"], e["tick"], e["reason"]) for e in logs if e["event"] == "run_skipped"] == [
        (skipped.id, skipped.scheduled_for.isoformat(), OVERLAP_SKIPPED)
    ]


async def test_runs_a_pass_finished_itself_wake_no_executor(pool: Any) -> None:
    payloads: asyncio.Queue[str] = asyncio.Queue()

    def heard(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        payloads.put_nowait(payload)

    async with pool.acquire() as listening:
        await listening.add_listener("scheduler_runs", heard)
        try:
            await make_job(pool, schedule="@every 10s", next_run_at=T0)
            await tick_once(
                pool, now=T0, executor=FakeExecutor("w-1")
            )  # a log run, finished: silent
            await make_job(pool, target=HTTP_TARGET, schedule="@every 10s", next_run_at=T0)
            await tick_once(
                pool, now=T0, executor=FakeExecutor("w-1")
            )  # a pending run: wakes executors
            await pool.execute("SELECT pg_notify('scheduler_runs', 'marker')")
            # Notifications arrive in commit order, so the marker closes the list.
            heard_payloads = [await asyncio.wait_for(payloads.get(), 5)]
            while heard_payloads[-1] != "marker":
                heard_payloads.append(await asyncio.wait_for(payloads.get(), 5))
            assert heard_payloads == ["", "marker"]
        finally:
            await listening.remove_listener("scheduler_runs", heard)


async def test_a_pass_holding_a_job_does_not_block_a_manual_trigger_of_it(pool: Any) -> None:
    job = await make_job(pool, next_run_at=T0)
    async with pool.acquire() as scheduler_conn, scheduler_conn.transaction():
        [claimed] = await store.jobs_claim_due(scheduler_conn, T0, 10)
        assert claimed.id == job.id
        # The trigger's run insert checks its job's key while the pass holds the row.
        run = await asyncio.wait_for(store.run_trigger(pool, "default", job.id), 5)
        assert run is not None and run.trigger == "manual"


async def test_a_pass_leases_ticks_to_its_executor_while_it_has_free_slots(pool: Any) -> None:
    jobs = [
        await make_job(
            pool,
            target=HTTP_TARGET,
            schedule="@every 1h",
            timeout_s=7,
            next_run_at=T0 + timedelta(seconds=i),
        )
        for i in range(3)
    ]
    hands = FakeExecutor("w-1", slots=2)
    result = await tick_once(pool, now=T0 + timedelta(seconds=5), executor=hands)
    assert (result.runs, result.for_executors) == (3, True)
    # The two earliest ticks went straight to this executor, leased for timeout + margin.
    assert [r.job_id for r in hands.adopted] == [jobs[0].id, jobs[1].id]
    assert hands.held == 0  # every reserved slot given back
    runs = [(await runs_of(pool, job.id))[0] for job in jobs]
    for run, claimed in zip(runs, hands.adopted, strict=False):
        assert (run.status, run.attempt, run.worker) == ("running", 1, "w-1")
        assert run.started_at == claimed.started_at and run.lease_expires_at is not None
        lease = run.lease_expires_at - run.started_at
        assert timedelta(seconds=11.9) < lease < timedelta(seconds=12.1)  # 7 s + 5 s margin
        assert (claimed.id, claimed.attempt, claimed.lost_worker) == (run.id, 1, None)
        assert (claimed.target, claimed.timeout_s, claimed.trigger) == (HTTP_TARGET, 7, "schedule")
    assert (runs[2].status, runs[2].worker) == ("pending", None)


async def test_a_failed_pass_gives_its_reserved_slots_back(pool: Any) -> None:
    await make_job(pool, target=HTTP_TARGET, next_run_at=T0)
    hands = FakeExecutor("w-1", slots=2)
    # A worker id the database refuses (NUL byte) makes the insert fail after the reserve.
    hands.worker_id = "w\x00"
    with pytest.raises(asyncpg.PostgresError):
        await tick_once(pool, now=T0, executor=hands)
    assert (hands.held, hands.adopted) == (0, [])


async def test_a_pass_whose_snapshot_predates_another_pass_does_not_run_alongside_it(
    pool: Any,
) -> None:
    """Read committed: a pass that finds a job locked by another pass, which commits
    and releases it before this pass gets to it, locks the job's new version, but
    its statement still sees the runs as they were before the other pass. Under
    forbid that view says "nothing unfinished", and the job's next tick would run
    beside the tick the other pass just made pending. A cursor makes the window
    exact: its snapshot is taken when it is declared, its rows are locked when
    fetched."""
    job = await make_job(
        pool,
        schedule="@every 1s",
        next_run_at=T0,
        overlap="forbid",
        misfire_policy="run_all",
        target={"type": "http", "url": "http://127.0.0.1:9/"},
    )
    async with pool.acquire() as late:
        async with late.transaction():
            await late.execute(
                f"DECLARE stale NO SCROLL CURSOR FOR {store.QUERIES['jobs_claim_due']}",
                T0 + timedelta(seconds=4.5),
                500,
                None,
                BEFORE_ALL,
            )
            # Meanwhile another pass: T0 pending, T0+1 … T0+3 waiting behind it.
            assert (await tick_once(pool, now=T0 + timedelta(seconds=3.5))).runs == 4
            claimed = msgspec.json.decode(
                await late.fetchval("FETCH ALL FROM stale"), type=list[DueJob]
            )
        # The stale statement leaves the job to a later pass rather than decide its
        # tick T0+4 on runs it cannot see.
        assert [j.id for j in claimed] == []
    await tick_once(pool, now=T0 + timedelta(seconds=4.5))
    runs = await runs_of(pool, job.id)
    claimable = [r.scheduled_for for r in runs if r.status == "pending" and r.next_attempt_at]
    assert claimable == [T0]
    assert len(runs) == 5


async def test_a_pass_keeps_each_ticks_own_catch_up_and_due_time(pool: Any) -> None:
    # One pass, three jobs: one late by two ticks (run_all: catch-up runs), one jittered
    # (a due time of its own), one plain. The columns most passes leave empty are sent
    # empty when no tick has a value (store.runs_materialize): here some do.
    late = await make_job(
        pool, schedule="@every 10s", next_run_at=T0, misfire_policy="run_all", misfire_grace_s=60
    )
    jittered = await make_job(pool, schedule="@every 1h", next_run_at=T0, jitter_s=30)
    plain = await make_job(pool, schedule="@every 1h", next_run_at=T0)
    assert (await tick_once(pool, now=T0 + timedelta(seconds=25))).jobs == 3

    rows = await pool.fetch(
        "SELECT job_id, scheduled_for, catch_up, due_at, error, lease_expires_at"
        " FROM job_runs ORDER BY job_id, scheduled_for"
    )
    by_job: dict[int, list[Any]] = {}
    for row in rows:
        by_job.setdefault(row["job_id"], []).append(row)
    assert [r["catch_up"] for r in by_job[late.id]] == [True, True, False]
    assert [r["due_at"] for r in by_job[late.id]] == [None, None, None]
    [jittered_run] = by_job[jittered.id]
    assert jittered_run["due_at"] is not None
    assert T0 <= jittered_run["due_at"] < T0 + timedelta(seconds=30)
    assert jittered_run["catch_up"] is False
    [plain_run] = by_job[plain.id]
    assert (plain_run["catch_up"], plain_run["due_at"]) == (False, None)
    assert all(r["error"] is None and r["lease_expires_at"] is None for r in rows)

    # A pass where no tick has any of them: all sent empty, all stored as nothing.
    await pool.execute("DELETE FROM jobs WHERE id <> $1", plain.id)
    assert (await tick_once(pool, now=T0 + timedelta(hours=1, seconds=1))).jobs == 1
    [next_run] = await pool.fetch(
        "SELECT catch_up, due_at, error, waits_for, lease_expires_at FROM job_runs"
        " WHERE job_id = $1 AND scheduled_for = $2",
        plain.id,
        T0 + timedelta(hours=1),
    )
    assert dict(next_run) == {
        "catch_up": False,
        "due_at": None,
        "error": None,
        "waits_for": None,
        "lease_expires_at": None,
    }
