"""Live consoles (console/live.py) on the real database: the jobs triggers' and the
engine's pulse's notifications, the hub's batches per tenant, its LISTEN connection lost
and reopened, and the event stream over HTTP."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from bench.common import wait_ready
from scheduler_svc import store
from scheduler_svc.config import Settings
from scheduler_svc.console.live import (
    CHANNEL,
    MAX_JOB_IDS,
    RETRY_MS,
    Closed,
    LiveHub,
    Subscription,
    stream,
)
from scheduler_svc.engine.rollup import PULSE_JOBS, RunStats
from scheduler_svc.engine.scheduler import tick_once
from scheduler_svc.store import db
from tests.console import sse_events
from tests.factories import make_job
from tests.helpers import cli_env, free_port, running_app, spawn_cli, stop
from tests.replicas import eventually

WAIT_S = 10  # for anything to arrive: a loaded 2-core machine lags


def tenant_name() -> str:
    return f"live-{secrets.token_hex(4)}"


@pytest.fixture
async def hub(database_url: str) -> AsyncIterator[LiveHub]:
    hub = LiveHub(database_url, worker_id=f"test-{secrets.token_hex(3)}")
    try:
        yield hub
    finally:
        await hub.close()


async def listen_sessions(pool: asyncpg.Pool[Any], hub: LiveHub) -> list[int]:
    """The server pids of the hub's LISTEN connection, known by its application_name."""
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = $1",
        hub.application_name,
    )
    return [row["pid"] for row in rows]


async def next_batch(subscription: Subscription) -> set[int] | None:
    """The subscription's next batch (as a set, to compare), failing after WAIT_S."""
    batch = await subscription.get(WAIT_S)
    return None if batch is None else set(batch)


async def job_of(pool: asyncpg.Pool[Any], tenant: str, name: str = "job") -> int:
    row = await make_job(pool, next_run_at=None, tenant=tenant, name=name, schedule="@daily")
    return row.id


async def touch(pool: asyncpg.Pool[Any], *job_ids: int) -> None:
    """Change jobs as the API would: their trigger tells the consoles."""
    await pool.execute("UPDATE jobs SET name = name WHERE id = ANY($1)", list(job_ids))


async def test_runs_the_engine_changed_reach_a_subscriber_by_its_pulse(
    pool: asyncpg.Pool[Any], hub: LiveHub
) -> None:
    tenant = tenant_name()
    job_id = await job_of(pool, tenant)
    stats = RunStats(pool, "test-pulse")
    async with hub.subscribe(tenant) as changes:
        stats.cancelled(tenant, job_id)  # as the API counts a cancel
        await stats.pulse()
        assert await next_batch(changes) == {job_id}
        await stats.pulse()  # nothing changed since: nothing sent
        stats.changed(tenant, job_id)
        await stats.pulse()
        assert await next_batch(changes) == {job_id}


async def test_jobs_created_changed_and_deleted_reach_a_subscriber(
    pool: asyncpg.Pool[Any], hub: LiveHub
) -> None:
    tenant = tenant_name()
    async with hub.subscribe(tenant) as changes:
        job_id = await job_of(pool, tenant)
        assert await next_batch(changes) == {job_id}
        await pool.execute("UPDATE jobs SET name = 'renamed' WHERE id = $1", job_id)
        assert await next_batch(changes) == {job_id}
        assert await store.job_delete(pool, tenant, job_id)
        assert await next_batch(changes) == {job_id}


async def test_many_changes_in_one_window_come_as_one_batch(
    pool: asyncpg.Pool[Any], database_url: str
) -> None:
    tenant = tenant_name()
    job_ids = [await job_of(pool, tenant, f"job-{i}") for i in range(20)]
    # A window wide enough for twenty commits on a loaded machine.
    hub = LiveHub(database_url, worker_id="test-batch", batch_s=2.0)
    try:
        async with hub.subscribe(tenant) as changes:
            started = time.monotonic()
            for job_id in job_ids:  # twenty statements, twenty transactions
                await pool.execute("UPDATE jobs SET name = name || '+' WHERE id = $1", job_id)
            assert time.monotonic() - started < 2.0, "the commits outlasted the window"
            assert await next_batch(changes) == set(job_ids)
            # Nothing of them is left over: the next batch is the next change alone.
            await pool.execute("UPDATE jobs SET name = 'last' WHERE id = $1", job_ids[0])
            assert await next_batch(changes) == {job_ids[0]}
    finally:
        await hub.close()


async def test_a_slow_subscriber_gets_its_batches_merged(
    pool: asyncpg.Pool[Any], database_url: str
) -> None:
    tenant = tenant_name()
    first, second = await job_of(pool, tenant, "a"), await job_of(pool, tenant, "b")
    # More than a batch may name, in statements of at most 50 jobs (the trigger's bound).
    many = [await job_of(pool, tenant, f"m-{i}") for i in range(MAX_JOB_IDS + 25)]
    chunks = [many[i : i + 45] for i in range(0, len(many), 45)]
    big = many[:60]
    hub = LiveHub(database_url, worker_id="test-slow", batch_s=0.05)
    try:
        async with hub.subscribe(tenant) as slow, hub.subscribe(tenant) as quick:
            for job_id in (first, second):
                await pool.execute("UPDATE jobs SET name = name WHERE id = $1", job_id)
                # Once the quick one has it, the slow one has it waiting too.
                assert await next_batch(quick) == {job_id}
            assert await next_batch(slow) == {first, second}
            # Past a bound, a waiting batch becomes "anything may have changed".
            for chunk in chunks:
                await pool.execute("UPDATE jobs SET name = name WHERE id = ANY($1)", chunk)
                assert await next_batch(quick) == set(chunk)
            assert await next_batch(slow) is None
            await pool.execute("UPDATE jobs SET name = name WHERE id = ANY($1)", big)
            assert await next_batch(quick) is None  # over 50 jobs: the trigger says null
            assert await next_batch(slow) is None
    finally:
        await hub.close()


async def test_a_subscriber_of_another_tenant_hears_nothing(
    pool: asyncpg.Pool[Any], hub: LiveHub
) -> None:
    mine, other = tenant_name(), tenant_name()
    my_job, other_job = await job_of(pool, mine), await job_of(pool, other)
    async with hub.subscribe(mine) as my_changes, hub.subscribe(other) as other_changes:
        await touch(pool, my_job)
        assert await next_batch(my_changes) == {my_job}
        # Notifications arrive in commit order on the one connection: had the first
        # reached the other tenant, it would be in this batch or before it.
        await touch(pool, other_job)
        assert await next_batch(other_changes) == {other_job}


async def test_malformed_notifications_are_ignored(pool: asyncpg.Pool[Any], hub: LiveHub) -> None:
    tenant = tenant_name()
    job_id = await job_of(pool, tenant)
    async with hub.subscribe(tenant) as changes:
        malformed = ["", "not json", "[]", '{"t": 1, "j": null}', json.dumps({"t": tenant})]
        malformed.append(json.dumps({"t": tenant, "j": ["x"]}))
        for payload in malformed:
            await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        await touch(pool, job_id)
        assert await next_batch(changes) == {job_id}
        assert hub.listening


async def test_a_killed_listen_connection_is_reopened_and_says_anything_may_have_changed(
    pool: asyncpg.Pool[Any], hub: LiveHub
) -> None:
    tenant = tenant_name()
    job_id = await job_of(pool, tenant)
    assert await listen_sessions(pool, hub) == []  # nothing opened before a stream subscribes
    async with hub.subscribe(tenant) as changes:
        [pid] = await listen_sessions(pool, hub)
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        # Notifications sent while nobody listened are lost: the stream hears None.
        assert await next_batch(changes) is None
        [reopened] = await listen_sessions(pool, hub)
        assert reopened != pid
        await touch(pool, job_id)
        assert await next_batch(changes) == {job_id}


async def test_the_listen_connection_closes_once_no_stream_is_left(
    pool: asyncpg.Pool[Any], database_url: str
) -> None:
    hub = LiveHub(database_url, worker_id=f"test-{secrets.token_hex(3)}", idle_close_s=0.1)
    try:
        async with hub.subscribe(tenant_name()):
            assert len(await listen_sessions(pool, hub)) == 1

        async def none_left() -> bool:
            return not hub.listening and not await listen_sessions(pool, hub)

        await eventually(none_left, WAIT_S, "the LISTEN session to end")
    finally:
        await hub.close()


async def test_closing_the_hub_ends_its_subscriptions(hub: LiveHub) -> None:
    async with hub.subscribe(tenant_name()) as changes:
        waiting = asyncio.create_task(changes.get())
        await hub.close()
        with pytest.raises(Closed):
            await asyncio.wait_for(waiting, WAIT_S)
        assert [batch async for batch in changes] == []


async def test_the_stream_says_its_retry_then_changes_and_keeps_alive(
    pool: asyncpg.Pool[Any], hub: LiveHub
) -> None:
    tenant = tenant_name()
    job_id = await job_of(pool, tenant)
    messages = stream(hub, tenant, keepalive_s=1.0)  # longer than a batch takes
    first = await anext(messages)  # sent once subscribed
    assert (first.retry, first.data, first.event) == (RETRY_MS, None, None)
    assert first.encode() == f": live\r\nretry: {RETRY_MS}\r\n\r\n".encode()
    await touch(pool, job_id)
    change = await asyncio.wait_for(anext(messages), WAIT_S)
    assert change.encode() == f'event: change\r\ndata: {{"jobs":[{job_id}]}}\r\n\r\n'.encode()
    keepalive = await asyncio.wait_for(anext(messages), WAIT_S)
    assert keepalive.encode() == b": keep-alive\r\n\r\n"
    await hub.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(messages), WAIT_S)


# --- the triggers' notifications ----------------------------------------------------------


async def notifications_until_marker(
    listener: asyncpg.Connection[Any], pool: asyncpg.Pool[Any], action: Any
) -> list[dict[str, Any]]:
    """The notifications on CHANNEL that `action` (a coroutine function) causes: those
    before a marker notified after it (one connection receives them in commit order)."""
    received: asyncio.Queue[str] = asyncio.Queue()
    marker = f"marker-{secrets.token_hex(4)}"

    def collect(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        received.put_nowait(str(payload))

    await listener.add_listener(CHANNEL, collect)
    try:
        await action()
        await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, marker)
        found: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT_S):
            while (payload := await received.get()) != marker:
                found.append(json.loads(payload))
        return found
    finally:
        await listener.remove_listener(CHANNEL, collect)


@pytest.fixture
async def listener(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(db.connect_options(database_url)[0])
    try:
        yield conn
    finally:
        await conn.close()


async def test_one_statement_over_two_tenants_notifies_each_once(
    pool: asyncpg.Pool[Any], listener: asyncpg.Connection[Any]
) -> None:
    a, b = sorted([tenant_name(), tenant_name()])
    a_jobs = [await job_of(pool, a, "a1"), await job_of(pool, a, "a2")]
    b_job = await job_of(pool, b)
    found = await notifications_until_marker(listener, pool, lambda: touch(pool, *a_jobs, b_job))
    assert sorted(found, key=lambda n: n["t"]) == [
        {"t": a, "j": sorted(a_jobs)},
        {"t": b, "j": [b_job]},
    ]


async def test_a_pass_is_told_by_its_replica_s_pulse_not_by_triggers_on_runs(
    pool: asyncpg.Pool[Any], listener: asyncpg.Connection[Any]
) -> None:
    """A scheduler pass advances its jobs and inserts their runs without a notification
    (no trigger on job_runs; the jobs trigger is quiet while the scheduler advances): the
    pulse tells them, a notification a tenant, with many jobs as null."""
    a, b = sorted([tenant_name(), tenant_name()])
    now = await pool.fetchval("SELECT now()")
    due = {"next_run_at": now, "schedule": "@every 1h"}
    due["target"] = {"type": "http", "url": "http://127.0.0.1:9/"}
    a_jobs = [(await make_job(pool, tenant=a, name=f"a{i}", **due)).id for i in range(2)]
    b_jobs = [(await make_job(pool, tenant=b, name=f"b{i}", **due)).id for i in range(51)]
    await make_job(pool, tenant=tenant_name(), name="elsewhere", **due)  # not this pass's
    stats = RunStats(pool, "test-pass")

    async def a_pass() -> None:
        # Only these tenants' jobs: other tests leave due jobs of their own.
        assert (await tick_once(pool, stats=stats, tenants=[a, b])).runs == 53

    assert await notifications_until_marker(listener, pool, a_pass) == []
    found = await notifications_until_marker(listener, pool, stats.pulse)
    assert len(b_jobs) > PULSE_JOBS
    assert sorted(found, key=lambda n: n["t"]) == [
        {"t": a, "j": sorted(a_jobs)},
        {"t": b, "j": None},
    ]


async def test_jobs_statements_notify_their_ids_and_many_as_null(
    pool: asyncpg.Pool[Any], listener: asyncpg.Connection[Any]
) -> None:
    tenant = tenant_name()
    job_ids = [await job_of(pool, tenant, f"j{i}") for i in range(51)]

    assert await notifications_until_marker(listener, pool, lambda: touch(pool, *job_ids[:50])) == [
        {"t": tenant, "j": job_ids[:50]}
    ]
    assert await notifications_until_marker(listener, pool, lambda: touch(pool, *job_ids)) == [
        {"t": tenant, "j": None}
    ]

    async def delete_two() -> None:
        await pool.execute("DELETE FROM jobs WHERE id = ANY($1)", job_ids[:2])

    assert await notifications_until_marker(listener, pool, delete_two) == [
        {"t": tenant, "j": job_ids[:2]}
    ]


# --- over HTTP ----------------------------------------------------------------------------


async def test_a_job_created_through_the_api_reaches_an_open_stream(
    database_url: str, pool: asyncpg.Pool[Any]
) -> None:
    settings = Settings(database_url=database_url, worker_id="test-live-http", role="api")
    async with (
        running_app(settings, pool) as url,
        httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http,
        http.stream("GET", "/ui/events") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        first = await asyncio.wait_for(anext(events), WAIT_S)  # subscribed
        assert first == {"": "live", "retry": str(RETRY_MS)}
        created = await http.post("/jobs", json={"name": "live", "schedule": "@daily"})
        assert created.status_code == 201, created.text
        event = await asyncio.wait_for(anext(events), WAIT_S)
        assert event["event"] == "change"
        assert json.loads(event["data"]) == {"jobs": [created.json()["id"]]}


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_stopping_replica_ends_its_open_streams_at_once(
    database_url: str, tmp_path: Path
) -> None:
    """SIGTERM with a console open: the stream ends and the process exits well inside a
    grace period (30 s) that an open stream would otherwise use up."""
    port = free_port()
    environ = cli_env(database_url, SCHEDULER_SHUTDOWN_GRACE_S="30", SCHEDULER_WORKER_ID="stop")
    with (tmp_path / "service.log").open("a") as log:
        process = spawn_cli(
            tmp_path, "serve", "--role", "api", "--port", str(port), env=environ, log=log
        )
        try:
            url = f"http://127.0.0.1:{port}"
            await asyncio.to_thread(wait_ready, url, process)
            async with (
                httpx.AsyncClient(base_url=url, timeout=60) as http,
                http.stream("GET", "/ui/events") as response,
            ):
                assert response.status_code == 200
                lines = response.aiter_lines()
                assert await asyncio.wait_for(anext(lines), 10) == ": live"
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                async for _ in lines:  # the server ends the stream
                    pass
            assert await asyncio.to_thread(process.wait, 20) == 0
            assert time.monotonic() - started < 10
        finally:
            stop(process)
    assert "Exception in ASGI application" not in (tmp_path / "service.log").read_text()
