"""Executors against a real database: leases, retries, timeouts, takeover, drain."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from scheduler_svc import store
from scheduler_svc.engine.attempts import result_of, retry_delay_s
from scheduler_svc.engine.executor import Executor
from scheduler_svc.engine.scheduler import tick_once
from scheduler_svc.logs import merge_context
from scheduler_svc.models import ClaimedRun, RunResult, RunRow
from scheduler_svc.schedule.overlap import OVERLAP_SKIPPED
from scheduler_svc.targets import Deliverer, HandlerContext, Outcome
from scheduler_svc.targets.http import WebhookClient
from tests.factories import make_job, runs_of

# Every test here starts from empty tables.
pytestmark = pytest.mark.usefixtures("clean")


Handler = Callable[[HandlerContext], Any]


def executor(
    pool: Any,
    http: WebhookClient,
    handlers: dict[str, Handler] | None = None,
    worker: str = "w1",
    **options: Any,
) -> Executor:
    deliverer = Deliverer(http, allow_private=True, handlers=handlers or {})
    return Executor(pool, deliverer, worker_id=worker, **options)


async def due_run(pool: Any, **job_fields: Any) -> tuple[int, RunRow]:
    """A job with one pending run, due now."""
    now = await store.db_now(pool)
    fields = {"schedule": "@every 1h", **job_fields}
    job = await make_job(pool, next_run_at=now - timedelta(seconds=1), **fields)
    await tick_once(pool)
    [run] = await runs_of(pool, job.id)
    return job.id, run


async def wait_for_run(
    pool: Any, run_id: int, done: Callable[[RunRow], bool], timeout_s: float = 15
) -> RunRow:
    """Poll the run until `done(run)` holds, failing after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        run = await store.run_get(pool, "default", run_id)
        assert run is not None
        if done(run):
            return run
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"run {run_id} stuck at {run.status} (attempt {run.attempt})")
        await asyncio.sleep(0.02)


async def record(pool: Any, worker: str, results: list[RunResult]) -> set[int]:
    """Record results as `worker`; return the run ids the database took."""
    return (await store.runs_exchange(pool, worker, results, 0, 10)).recorded


def final(run: RunRow) -> bool:
    return run.status in ("succeeded", "failed", "skipped")


async def run_until_final(pool: Any, ex: Executor, run_id: int) -> RunRow:
    """Run the executor's loop until the run is final; then stop and drain it."""
    stop = asyncio.Event()
    loop = asyncio.create_task(ex.run(stop))
    try:
        return await wait_for_run(pool, run_id, final)
    finally:
        stop.set()
        await loop
        await ex.drain(1)


async def test_claim_leases_a_run_to_one_worker_only(pool: Any, http: WebhookClient) -> None:
    _, run = await due_run(pool)
    first, second = executor(pool, http, worker="a"), executor(pool, http, worker="b")
    claims = await asyncio.gather(first.claim_once(10), second.claim_once(10))
    claimed = [c for batch in claims for c in batch]
    assert [c.id for c in claimed] == [run.id]
    leased = await store.run_get(pool, "default", run.id)
    assert leased is not None
    assert (leased.status, leased.attempt) == ("running", 1)
    assert leased.worker in ("a", "b") and leased.lease_expires_at is not None
    assert leased.lease_expires_at - leased.started_at >= timedelta(seconds=30)  # timeout + margin


async def test_claim_takes_no_more_than_asked(pool: Any, http: WebhookClient) -> None:
    now = await store.db_now(pool)
    for _ in range(5):
        await make_job(pool, schedule="@every 1h", next_run_at=now - timedelta(seconds=1))
    await tick_once(pool)
    assert len(await executor(pool, http).claim_once(3)) == 3


async def test_log_run_succeeds_and_is_recorded(pool: Any, http: WebhookClient) -> None:
    _, run = await due_run(pool, attributes={"k": "v"})
    ex = executor(pool, http)
    done = await run_until_final(pool, ex, run.id)
    assert (done.status, done.attempt, done.worker, done.error) == ("succeeded", 1, "w1", None)
    assert done.finished_at is not None and done.duration_ms is not None
    job = await store.job_get(pool, "default", done.job_id)
    assert job is not None
    assert (job.last_run_status, job.last_run_at) == ("succeeded", done.started_at)


async def test_an_attempt_logs_its_start_and_its_end_with_the_run_ids(
    pool: Any, http: WebhookClient
) -> None:
    async def work(ctx: HandlerContext) -> None:
        await asyncio.sleep(0.05)  # an attempt that takes a known time

    job_id, run = await due_run(pool, target={"type": "handler", "name": "work"})
    ex = executor(pool, http, handlers={"work": work})
    [claimed] = await ex.claim_once(1)
    # The run's ids are bound around the attempt, as the service's log lines show them.
    with structlog.testing.capture_logs(processors=[merge_context]) as logs:
        began = time.perf_counter()
        await ex.execute(claimed)
        wall_ms = (time.perf_counter() - began) * 1000
    ids = {
        "job_id": job_id,
        "run_id": run.id,
        "tick": run.scheduled_for.isoformat(),
        "attempt": 1,
        "worker": "w1",
    }
    started, attempted = (
        next(e for e in logs if e["event"] == name) for name in ("run_started", "run_attempted")
    )
    assert started.items() >= {**ids, "trigger": "schedule"}.items()
    assert attempted.items() >= {**ids, "status": "succeeded"}.items()
    # Timed around the handler's call: no less than its work, no more than the whole attempt.
    assert 50 <= attempted["duration_ms"] <= wall_ms


async def test_failing_handler_is_retried_then_failed(pool: Any, http: WebhookClient) -> None:
    calls: list[int] = []

    async def boom(ctx: HandlerContext) -> None:
        calls.append(ctx.attempt)
        raise RuntimeError("the database of the customer is down")

    _, run = await due_run(
        pool, target={"type": "handler", "name": "boom"}, max_attempts=3, backoff_s=0.05
    )
    ex = executor(pool, http, handlers={"boom": boom})
    done = await run_until_final(pool, ex, run.id)
    assert calls == [1, 2, 3]
    assert (done.status, done.attempt) == ("failed", 3)
    assert done.error == "RuntimeError: the database of the customer is down"


async def test_a_retry_starts_when_its_delay_is_up_without_a_wake_up(
    pool: Any, http: WebhookClient
) -> None:
    # Nothing NOTIFYs a retry: the executor that recorded it must wake for it itself,
    # not at its longest sleep (5 s by default).
    loop = asyncio.get_running_loop()
    started: list[float] = []

    async def flaky(ctx: HandlerContext) -> None:
        started.append(loop.time())
        if ctx.attempt == 1:
            raise RuntimeError("not yet")

    _, run = await due_run(
        pool, target={"type": "handler", "name": "flaky"}, max_attempts=2, backoff_s=0.3
    )
    ex = executor(pool, http, handlers={"flaky": flaky})
    done = await run_until_final(pool, ex, run.id)

    assert (done.status, done.attempt) == ("succeeded", 2)
    # 0.3 s ± 20 % jitter, plus the time to record the first attempt and lease the second.
    assert 0.24 <= started[1] - started[0] < 1.5


async def test_retry_waits_pending_with_next_attempt_at(pool: Any, http: WebhookClient) -> None:
    async def boom(ctx: HandlerContext) -> None:
        raise RuntimeError("nope")

    _, run = await due_run(pool, target={"type": "handler", "name": "boom"}, backoff_s=100)
    ex = executor(pool, http, handlers={"boom": boom})
    [claimed] = await ex.claim_once(1)
    result = await ex.execute(claimed)
    assert result.status == "pending"
    assert result.delay_s is not None and 80 <= result.delay_s <= 120
    assert await record(pool, "w1", [result]) == {run.id}
    waiting = await store.run_get(pool, "default", run.id)
    assert waiting is not None
    assert (waiting.status, waiting.attempt) == ("pending", 1)
    expected = await store.db_now(pool) + timedelta(seconds=result.delay_s)
    assert abs(waiting.next_attempt_at - expected) < timedelta(seconds=2)
    assert await ex.claim_once(1) == []  # not before its time


async def test_timeout_cancels_the_attempt_and_counts_as_failure(
    pool: Any, http: WebhookClient
) -> None:
    cancelled = asyncio.Event()

    async def hang(ctx: HandlerContext) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    await due_run(pool, target={"type": "handler", "name": "hang"}, timeout_s=1, max_attempts=1)
    ex = executor(pool, http, handlers={"hang": hang})
    [claimed] = await ex.claim_once(1)
    result = await ex.execute(claimed)
    assert cancelled.is_set()
    assert (result.status, result.error) == ("failed", "timed out after 1 s")
    assert 900 <= result.duration_ms < 5000


async def test_result_for_another_workers_lease_is_not_recorded(
    pool: Any, http: WebhookClient
) -> None:
    _, run = await due_run(pool)
    ex = executor(pool, http, worker="a")
    [claimed] = await ex.claim_once(1)
    result = await ex.execute(claimed)
    assert await record(pool, "someone-else", [result]) == set()
    still = await store.run_get(pool, "default", run.id)
    assert still is not None and still.status == "running"


async def test_a_result_whose_lease_was_taken_over_is_dropped_and_logged_with_its_run(
    pool: Any, http: WebhookClient
) -> None:
    job_id, run = await due_run(pool)
    ex = executor(pool, http, worker="a")
    [claimed] = await ex.claim_once(1)
    # Another replica takes the run over while this one is still at it.
    await pool.execute("UPDATE job_runs SET worker = 'b' WHERE id = $1", run.id)
    ex._start(claimed)
    await asyncio.gather(*ex._inflight.values())
    with structlog.testing.capture_logs() as logs:
        await ex.exchange_once(0)
    [lost] = [e for e in logs if e["event"] == "lease_lost"]
    assert (
        lost.items()
        >= {
            "run_id": run.id,
            "job_id": job_id,
            "tick": run.scheduled_for.isoformat(),
            "attempt": 1,
            "worker": "a",
            "status": "succeeded",
        }.items()
    )
    still = await store.run_get(pool, "default", run.id)
    assert still is not None and (still.status, still.worker) == ("running", "b")


async def test_expired_lease_is_taken_over_as_the_next_attempt(
    pool: Any, http: WebhookClient
) -> None:
    _, run = await due_run(pool, timeout_s=1)
    dead = executor(pool, http, worker="dead", lease_margin_s=0)
    [claimed] = await dead.claim_once(1)  # ... and the worker dies before finishing
    assert claimed.attempt == 1
    survivor = executor(pool, http, worker="alive", lease_margin_s=0)
    deadline = asyncio.get_running_loop().time() + 10
    taken: list[ClaimedRun] = []
    while not taken:
        assert asyncio.get_running_loop().time() < deadline, "the lease never expired"
        taken = await survivor.claim_once(1)
        if not taken:
            await asyncio.sleep(0.05)
    assert (taken[0].id, taken[0].attempt, taken[0].lost_worker) == (run.id, 2, "dead")
    result = await survivor.execute(taken[0])
    assert await record(pool, "alive", [result]) == {run.id}
    # The dead worker's late result, should it ever come, changes nothing.
    late = await dead.execute(claimed)
    assert await record(pool, "dead", [late]) == set()
    done = await store.run_get(pool, "default", run.id)
    assert done is not None
    assert (done.status, done.worker, done.attempt) == ("succeeded", "alive", 2)


async def test_expired_leases_are_taken_only_by_exchanges_that_look_at_leases(
    pool: Any, http: WebhookClient
) -> None:
    _, expired = await due_run(pool, timeout_s=30)
    await executor(pool, http, worker="dead", lease_margin_s=0).claim_once(1)
    await due_run(pool, timeout_s=30)  # a run another worker is still on
    await executor(pool, http, worker="busy", lease_margin_s=0).claim_once(1)
    await pool.execute(
        "UPDATE job_runs SET lease_expires_at = now() - interval '1 s' WHERE id = $1", expired.id
    )

    blind = await store.runs_exchange(pool, "alive", [], 10, 0, leases=False)
    looking = await store.runs_exchange(pool, "alive", [], 10, 0, leases=True)

    assert (blind.leased, blind.next_lease_end_in_s) == ([], None)
    assert [(r.id, r.attempt, r.lost_worker) for r in looking.leased] == [(expired.id, 2, "dead")]
    # The lease still running elsewhere: when to look again.
    assert looking.next_lease_end_in_s is not None and 20 < looking.next_lease_end_in_s <= 30


async def test_drain_hands_back_unfinished_runs_without_using_an_attempt(
    pool: Any, http: WebhookClient
) -> None:
    started = asyncio.Event()

    async def slow(ctx: HandlerContext) -> None:
        started.set()
        await asyncio.Event().wait()

    _, run = await due_run(pool, target={"type": "handler", "name": "slow"}, timeout_s=60)
    ex = executor(pool, http, handlers={"slow": slow})
    stop = asyncio.Event()
    loop = asyncio.create_task(ex.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await loop
    await ex.drain(0.2)
    back = await store.run_get(pool, "default", run.id)
    assert back is not None
    assert (back.status, back.attempt, back.lease_expires_at) == ("pending", 0, None)


async def test_drain_waits_for_runs_that_finish_within_the_grace(
    pool: Any, http: WebhookClient
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def gated(ctx: HandlerContext) -> dict[str, int]:
        started.set()
        await release.wait()
        return {"rows": 3}

    _, run = await due_run(pool, target={"type": "handler", "name": "gated"})
    ex = executor(pool, http, handlers={"gated": gated})
    stop = asyncio.Event()
    loop = asyncio.create_task(ex.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await loop
    draining = asyncio.create_task(ex.drain(10))
    release.set()
    await draining
    done = await store.run_get(pool, "default", run.id)
    assert done is not None
    assert (done.status, done.output) == ("succeeded", {"rows": 3})


def claimed_run(**fields: Any) -> ClaimedRun:
    base: dict[str, Any] = {
        "id": 1,
        "job_id": 1,
        "tenant": "default",
        "scheduled_for": datetime(2031, 1, 1, tzinfo=UTC),
        "trigger": "schedule",
        "attempt": 1,
        "started_at": datetime(2031, 1, 1, tzinfo=UTC),
        "lost_worker": None,
        "name": "job",
        "attributes": {},
        "target": {"type": "log"},
        "timeout_s": 30,
        "max_attempts": 3,
        "backoff_s": 10.0,
        "backoff_max_s": 3600.0,
    }
    return ClaimedRun(**{**base, **fields})


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 8, 12), (2, 16, 24), (3, 32, 48), (9, 2048, 3072), (20, 2880, 4320)],
)
def test_backoff_doubles_with_jitter_up_to_the_cap(attempt: int, low: float, high: float) -> None:
    delays = [retry_delay_s(attempt, 10, 3600) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert max(delays) - min(delays) > (high - low) / 4  # jitter is really there


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    outcome = Outcome(ok=False, error="HTTP 429", retry_after_s=120)
    assert result_of(claimed_run(), outcome, 1.0).delay_s == 120
    assert result_of(claimed_run(backoff_max_s=60), outcome, 1.0).delay_s == 60


def test_non_retryable_failure_fails_at_once() -> None:
    outcome = Outcome(ok=False, error="HTTP 404", retryable=False)
    assert result_of(claimed_run(attempt=1), outcome, 1.0).status == "failed"


def test_last_attempt_failure_is_final() -> None:
    outcome = Outcome(ok=False, error="HTTP 503")
    assert result_of(claimed_run(attempt=3), outcome, 1.0).status == "failed"
    assert result_of(claimed_run(attempt=2), outcome, 1.0).status == "pending"


async def test_every_run_of_a_busy_loop_is_recorded(pool: Any, http: WebhookClient) -> None:
    """Results that arrive while an exchange is in flight are recorded by the next one."""
    release = asyncio.Event()

    async def slow_to_finish(ctx: HandlerContext) -> int:
        await release.wait()
        return ctx.run_id

    now = await store.db_now(pool)
    jobs = [
        await make_job(
            pool,
            schedule="@every 1h",
            next_run_at=now - timedelta(seconds=1),
            target={"type": "handler", "name": "slow"},
        )
        for _ in range(60)
    ]
    await tick_once(pool)
    ex = executor(pool, http, handlers={"slow": slow_to_finish}, concurrency=8, claim_batch=3)
    stop = asyncio.Event()
    loop = asyncio.create_task(ex.run(stop))
    # Several exchanges go by while the first attempts are still under way.
    deadline = asyncio.get_running_loop().time() + 20
    while await pool.fetchval("SELECT count(*) FROM job_runs WHERE status = 'running'") < 8:
        assert asyncio.get_running_loop().time() < deadline, "the slots never filled"
        await asyncio.sleep(0.02)
    release.set()
    while await pool.fetchval("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") < 60:
        assert asyncio.get_running_loop().time() < deadline, "some results were never recorded"
        await asyncio.sleep(0.02)
    stop.set()
    await loop
    await ex.drain(1)
    outputs = await pool.fetch("SELECT id, output, attempt FROM job_runs")
    assert all(r["output"] == r["id"] and r["attempt"] == 1 for r in outputs)
    assert len({r["id"] for r in outputs}) == len(jobs)


# --- overlap forbid by real time (§3.7) ---------------------------------------------


async def db_clock_past(pool: Any, instant: datetime, timeout_s: float = 10) -> None:
    """Return once the database clock is past `instant`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while await store.db_now(pool) <= instant:
        assert asyncio.get_running_loop().time() < deadline, f"the clock never passed {instant}"
        await asyncio.sleep(0.02)


async def running_then_waiting(pool: Any, ex: Executor) -> tuple[ClaimedRun, RunRow, datetime]:
    """An overlap-forbidding job whose first tick's run `ex` has leased, and whose next
    tick (returned with its run) came due meanwhile and waits for it."""
    now = await store.db_now(pool)
    # Due half a second ago: the next tick comes half a second from now.
    first_tick = now - timedelta(seconds=0.5)
    job = await make_job(pool, schedule="@every 1s", next_run_at=first_tick, overlap="forbid")
    await tick_once(pool, now=first_tick)
    [claimed] = await ex.claim_once(1)
    next_tick = first_tick + timedelta(seconds=1)
    await tick_once(pool, now=next_tick)
    _, waiting = await runs_of(pool, job.id)
    assert (waiting.status, waiting.next_attempt_at) == ("pending", None)
    return claimed, waiting, next_tick


async def test_a_tick_due_after_a_run_ended_unrecorded_is_run_when_the_end_is_recorded(
    pool: Any, http: WebhookClient
) -> None:
    """The database outage in small: the run ends before the next tick, but its result
    reaches the database only after it. The tick is no overlap: it runs."""
    ex = executor(pool, http)
    claimed, waiting, next_tick = await running_then_waiting(pool, ex)
    result = await ex.execute(claimed)  # ends now, well before the next tick
    await db_clock_past(pool, next_tick)  # ... and is recorded only after it
    exchange = await store.runs_exchange(pool, "w1", [result], 0, 10)
    assert exchange.ended_with_waiters == [claimed.id]
    assert await ex.settle_waiting(exchange) == 1

    first = await store.run_get(pool, "default", claimed.id)
    assert first is not None and first.finished_at is not None
    assert first.finished_at < next_tick  # when it really ended, not when it was recorded
    released = await run_until_final(pool, ex, waiting.id)
    assert (released.status, released.attempt) == ("succeeded", 1)
    assert released.started_at is not None and released.started_at > first.finished_at


async def test_a_tick_due_while_a_run_was_really_running_is_skipped_when_it_ends(
    pool: Any, http: WebhookClient
) -> None:
    ex = executor(pool, http)
    claimed, waiting, next_tick = await running_then_waiting(pool, ex)
    await db_clock_past(pool, next_tick)  # the run is still under way at the next tick
    result = await ex.execute(claimed)
    with structlog.testing.capture_logs() as logs:
        assert await ex.settle_waiting(await store.runs_exchange(pool, "w1", [result], 0, 10)) == 0
    skipped = await store.run_get(pool, "default", waiting.id)
    assert skipped is not None
    assert (skipped.status, skipped.error) == ("skipped", OVERLAP_SKIPPED)
    assert [(e["run_id"], e["tick"]) for e in logs if e["event"] == "run_skipped"] == [
        (waiting.id, waiting.scheduled_for.isoformat())
    ]


async def test_a_backlog_of_forbidden_overlap_runs_one_tick_at_a_time_in_order(
    pool: Any, http: WebhookClient
) -> None:
    now = await store.db_now(pool)
    job = await make_job(
        pool,
        schedule="@every 1s",
        next_run_at=now - timedelta(seconds=3),
        overlap="forbid",
        misfire_policy="run_all",
        misfire_grace_s=60,
    )
    await tick_once(pool)
    backlog = await runs_of(pool, job.id)
    assert len(backlog) == 4
    await run_until_final(pool, executor(pool, http), backlog[-1].id)
    runs = await runs_of(pool, job.id)
    assert [r.status for r in runs] == ["succeeded"] * 4
    for earlier, later in itertools.pairwise(runs):
        assert earlier.finished_at is not None and later.started_at is not None
        assert later.started_at >= earlier.finished_at, "two runs of the job overlapped"


async def test_a_waiting_run_whose_wait_ended_unseen_is_found_by_the_lease_check(
    pool: Any, http: WebhookClient
) -> None:
    """A pass can add a waiting run while an exchange records the end it waits for; neither
    sees the other. The executors' periodic look at leases finds it and runs it."""
    job_id, first = await due_run(pool, overlap="forbid")
    ex = executor(pool, http)
    await run_until_final(pool, ex, first.id)
    stranded = await pool.fetchval(
        "INSERT INTO job_runs (job_id, tenant, scheduled_for, status, next_attempt_at,"
        " ready_at, waits_for) VALUES ($1, 'default', now(), 'pending', NULL, NULL, $2)"
        " RETURNING id",
        job_id,
        first.id,
    )
    blind = await store.runs_exchange(pool, "w1", [], 0, 10, leases=False)
    assert blind.stranded_jobs == []
    ran = await run_until_final(pool, executor(pool, http), stranded)
    assert ran.status == "succeeded"
