"""One replica's background work (scheduler_svc/engine/worker.py) in this event loop: its
loops start and stop together, notifications wake them, a lost LISTEN connection is
opened again, and a loop that dies takes the worker down with it.

The scheduler and executor loops on their own are in test_scheduler.py and
test_executor.py; a worker inside a served app in test_api_runs.py and test_metrics.py;
replicas as processes in test_replicas.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import structlog

from scheduler_svc import store
from scheduler_svc.config import Settings
from scheduler_svc.engine import maintenance
from scheduler_svc.engine.worker import Worker
from scheduler_svc.store import db
from scheduler_svc.targets import Deliverer, HandlerContext
from scheduler_svc.targets.http import WebhookClient
from tests.factories import make_job
from tests.replicas import eventually

pytestmark = [pytest.mark.usefixtures("clean"), pytest.mark.timeout(60)]

WORKER_ID = "worker-under-test"


@pytest.fixture
def worker_settings(make_settings: Any) -> Settings:
    settings: Settings = make_settings(
        role="worker", worker_id=WORKER_ID, shutdown_grace_s=1.0, lease_margin_s=1.0
    )
    return settings


@pytest.fixture
def called() -> asyncio.Queue[HandlerContext]:
    """Every call of the `record` handler."""
    return asyncio.Queue()


@pytest.fixture
async def worker(
    worker_settings: Settings,
    pool: Any,
    http: WebhookClient,
    called: asyncio.Queue[HandlerContext],
) -> AsyncIterator[Worker]:
    """A worker on the test database, not started; stopped afterwards."""

    async def record(ctx: HandlerContext) -> None:
        called.put_nowait(ctx)

    deliverer = Deliverer(http, allow_private=True, handlers={"record": record})
    worker = Worker(worker_settings, pool, deliverer)
    yield worker
    await worker.stop()


async def listener_pids(pool: Any) -> list[int]:
    """The server pids of the worker's LISTEN sessions, known by their application_name."""
    pids: list[int] = [
        r["pid"]
        for r in await pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            db.application_name(WORKER_ID),
        )
    ]
    return pids


async def listening(pool: Any) -> int:
    """The pid of the worker's one LISTEN session, once it is there."""

    async def one() -> int | None:
        pids = await listener_pids(pool)
        return pids[0] if len(pids) == 1 else None

    pid: int = await eventually(one, 10, "the worker's LISTEN session")
    return pid


async def no_listener(pool: Any) -> None:
    """Until the worker's LISTEN session has ended on the server too."""

    async def gone() -> bool:
        return await listener_pids(pool) == []

    await eventually(gone, 10, "the worker's LISTEN session to end")


async def test_a_started_worker_runs_due_work_and_stops_every_loop(
    worker: Worker, pool: Any, called: asyncio.Queue[HandlerContext]
) -> None:
    now = await store.db_now(pool)
    job = await make_job(
        pool,
        next_run_at=now - timedelta(seconds=1),
        schedule="@every 1h",
        target={"type": "handler", "name": "record"},
    )

    with structlog.testing.capture_logs() as logs:
        task = worker.start()
        # Scheduled, leased and executed; or the worker died trying.
        call = asyncio.ensure_future(called.get())
        await asyncio.wait({call, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert call.done(), task.exception() if task.done() else "no run within 10 s"
        ctx = call.result()
        await listening(pool)
        await worker.stop()

    assert (ctx.job_id, ctx.attempt) == (job.id, 1)
    assert task.done() and task.exception() is None
    await no_listener(pool)
    events = [e["event"] for e in logs if e["event"].startswith("worker_")]
    assert events == ["worker_started", "worker_stopped"]


async def test_notifications_wake_the_loop_they_are_for(worker: Worker, pool: Any) -> None:
    worker.start()
    await listening(pool)

    for channel, loop in [
        ("scheduler_runs", worker.executor),
        ("scheduler_jobs", worker.scheduler),
    ]:
        loop.wake.clear()
        woken = asyncio.create_task(loop.wake.wait())
        await pool.execute("SELECT pg_notify($1, '')", channel)
        await asyncio.wait_for(woken, 5)


async def test_a_lost_listen_connection_is_opened_again(worker: Worker, pool: Any) -> None:
    with structlog.testing.capture_logs() as logs:
        task = worker.start()
        first = await listening(pool)

        await pool.execute("SELECT pg_terminate_backend($1)", first)

        async def another() -> int | None:
            pids = await listener_pids(pool)
            return pids[0] if pids and pids[0] != first else None

        second = await eventually(another, 10, "a new LISTEN session")

    assert second != first
    assert not task.done(), "losing the LISTEN connection is no reason to stop"
    assert "listen_connection_lost" in [e["event"] for e in logs]


async def test_a_listen_connection_lost_while_it_is_set_up_is_told_as_lost(
    worker: Worker, pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server ends the session between two of its LISTENs: the next one fails on a
    # closed connection. That is the connection lost, not some database error.
    add_listener = asyncpg.Connection.add_listener
    ended: list[int] = []

    async def ended_before_the_second(conn: Any, channel: str, callback: Any) -> None:
        if channel == "scheduler_runs" and not ended:
            pid = conn.get_server_pid()
            assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
            ended.append(pid)

            async def closed() -> bool:
                return conn.is_closed()

            await eventually(closed, 10, "the client to see its session ended")
        await add_listener(conn, channel, callback)

    monkeypatch.setattr(asyncpg.Connection, "add_listener", ended_before_the_second)
    told = {"listen_connection_lost", "listen_database_error"}
    with structlog.testing.capture_logs() as logs:
        task = worker.start()

        async def reported() -> str | None:
            return next((e["event"] for e in logs if e["event"] in told), None)

        async def another() -> int | None:
            pids = await listener_pids(pool)
            return pids[0] if ended and pids and pids[0] not in ended else None

        event = await eventually(reported, 10, "the loss told")
        second = await eventually(another, 10, "a new LISTEN session")

    assert event == "listen_connection_lost"
    [lost] = [e for e in logs if e["event"] == "listen_connection_lost"]
    assert "terminat" in lost["error"] or "closed" in lost["error"], lost
    assert second not in ended and not task.done()


async def test_a_loop_that_dies_stops_the_worker_and_its_other_loops(
    worker: Worker, pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pruning = asyncio.Event()

    async def broken_maintenance(*args: Any, **kwargs: Any) -> None:
        await listening(pool)  # every other loop is up by now
        pruning.set()
        raise RuntimeError("pruning broke")

    monkeypatch.setattr(maintenance, "run", broken_maintenance)

    task = worker.start()
    await asyncio.wait_for(pruning.wait(), 10)
    with pytest.raises(ExceptionGroup) as failed:
        await asyncio.wait_for(task, 10)

    assert [str(e) for e in failed.value.exceptions] == ["pruning broke"]
    await no_listener(pool)  # the LISTEN loop was stopped with it
    await asyncio.wait_for(worker.stop(), 10)  # and the worker still stops cleanly
