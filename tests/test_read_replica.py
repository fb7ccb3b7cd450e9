"""Read replicas (DATABASE_READ_URL) against a real streaming standby: run lists come
from the replica while it keeps up, and from the primary for what a client just wrote,
while the replica lags past SCHEDULER_READ_MAX_LAG_S, and while it is down.

The primary and its standby are the module's own processes (tests/standby.py). Holding
the standby's replay still (`pg_wal_replay_pause`) makes it stale on purpose, which is
how a read is seen to come from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc import store
from scheduler_svc.api.reads import READ_AFTER_LSN, READ_POOL, WRITTEN_LSN
from scheduler_svc.config import Settings
from scheduler_svc.store import db, migrate
from scheduler_svc.store.replica import format_lsn, parse_lsn
from tests import standby
from tests.helpers import assert_problem, create_job, embedded_data_dir, poll_json, running_app

BIN_DIR, NO_BINARIES = standby.binaries()
# The module starts a primary and its standby as processes of its own.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BIN_DIR is None, reason=NO_BINARIES),
    pytest.mark.timeout(90),
]
DATABASE = "scheduler"
WAIT_S = 20.0  # for the replica's state to change: it is checked about once a second


@pytest.fixture(scope="module")
async def pair() -> AsyncIterator[standby.Pair]:
    """A primary with the schema applied, and its streaming standby."""
    with embedded_data_dir() as directory:
        async with standby.streaming_pair(directory) as pair:
            admin = await standby.connect(pair.primary)
            try:
                await admin.execute(f'CREATE DATABASE "{DATABASE}"')
            finally:
                await admin.close()
            conn = await standby.connect(pair.primary, DATABASE)
            try:
                await migrate.migrate(conn)  # as tests/conftest.py applies the schema
            finally:
                await conn.close()
            yield pair


@pytest.fixture(scope="module")
async def primary_pool(pair: standby.Pair) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await db.create_pool(pair.primary.database_url(DATABASE))
    yield pool
    await pool.close()


@contextlib.asynccontextmanager
async def serving(
    pair: standby.Pair, pool: asyncpg.Pool[Any], *, read_url: str | None = None, **changes: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The API (one process's worth) on the primary with the standby as its read replica."""
    settings = Settings(
        database_url=pair.primary.database_url(DATABASE),
        database_read_url=read_url or pair.standby.database_url(DATABASE),
        role="api",
        worker_id="test-read-replica",
        # Far beyond a test's length unless it says otherwise: a held replay stays "ok".
        **{"read_max_lag_s": 60.0, **changes},
    )
    async with (
        running_app(settings, pool) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        yield http


@contextlib.asynccontextmanager
async def replay_paused(pair: standby.Pair) -> AsyncIterator[None]:
    """The standby keeps receiving the primary's WAL but replays none of it meanwhile."""
    conn = await standby.connect(pair.standby, DATABASE)
    try:
        await conn.execute("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + WAIT_S
        while await conn.fetchval("SELECT pg_get_wal_replay_pause_state()") != "paused":
            assert time.monotonic() < deadline, "the standby's replay did not pause"
            await asyncio.sleep(0.02)
        yield
    finally:
        await conn.execute("SELECT pg_wal_replay_resume()")
        await conn.close()


async def served_by(
    http: httpx.AsyncClient,
    url: str,
    pool: str,
    headers: dict[str, str] | None = None,
    until: Callable[[httpx.Response], bool] = lambda response: True,
) -> httpx.Response:
    """GET `url` until the pool named `pool` answers it, with an answer `until` accepts (the
    router sees the replica past a write at its next check, about a second later)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        response = await http.get(url, headers=headers)
        assert response.status_code == 200, response.text
        if response.headers[READ_POOL] == pool and until(response):
            return response
        assert time.monotonic() < deadline, (
            f"{url}: still {response.headers[READ_POOL]}, {response.text}"
        )
        await asyncio.sleep(0.05)


async def reads_served(http: httpx.AsyncClient, pool: str) -> float:
    text = (await http.get("/metrics")).text
    found = re.search(rf'^scheduler_history_reads_total{{pool="{pool}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def ids(response: httpx.Response) -> list[int]:
    return [run["id"] for run in response.json()]


def test_lsns_read_and_write_as_postgresql_does() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert format_lsn(0) == "0/0"
    for bad in ("", "16", "/1", "1/", "123456789/0", "g/0", "-1/0", "1/+2"):
        with pytest.raises(ValueError, match="not an LSN"):
            parse_lsn(bad)


async def test_a_run_list_is_read_from_the_replica_while_it_keeps_up(
    pair: standby.Pair, primary_pool: asyncpg.Pool[Any]
) -> None:
    async with serving(pair, primary_pool) as http:
        ready = await poll_json(http, "/readyz", lambda body: body.get("read_replica") == "ok")
        assert ready["status"] == "ready" and ready["read_replica_lag_s"] is not None
        job = await create_job(http)
        runs = f"/jobs/{job['id']}/runs"
        await served_by(http, runs, "replica")
        before = await reads_served(http, "replica")

        async with replay_paused(pair):
            # A run the scheduler might have written: no client of this process wrote it.
            run = await store.run_trigger(primary_pool, "default", job["id"])
            assert run is not None
            stale = await http.get(runs)
            assert stale.headers[READ_POOL] == "replica"
            assert stale.json() == []  # what the standby had replayed when it was held
            # A point read stays on the primary.
            assert (await http.get(f"/runs/{run.id}")).status_code == 200

        # Replayed once resumed, and then read from the replica.
        await served_by(http, runs, "replica", until=lambda r: ids(r) == [run.id])
        assert await reads_served(http, "replica") >= before + 2


async def test_a_client_reads_its_own_writes_though_the_replica_has_not_replayed_them(
    pair: standby.Pair, primary_pool: asyncpg.Pool[Any]
) -> None:
    # Two API processes on the same pair: `mine` took the write, `theirs` did not see it.
    async with (
        serving(pair, primary_pool) as mine,
        serving(pair, primary_pool) as theirs,
    ):
        created = await mine.post("/jobs", json={"name": "job", "schedule": "@every 1h"})
        assert created.status_code == 201
        parse_lsn(created.headers[WRITTEN_LSN])  # every write says where it is
        job = created.json()
        runs = f"/jobs/{job['id']}/runs"
        await served_by(mine, runs, "replica")
        await served_by(theirs, runs, "replica")

        async with replay_paused(pair):
            triggered = await mine.post(f"/jobs/{job['id']}/trigger")
            assert triggered.status_code == 202
            run_id = triggered.json()["id"]
            written = triggered.headers[WRITTEN_LSN]
            assert parse_lsn(written) > parse_lsn(created.headers[WRITTEN_LSN])

            # The tenant fence: the process that took the write reads it from the primary.
            own = await mine.get(runs)
            assert (own.headers[READ_POOL], ids(own)) == ("primary", [run_id])
            # Another process knows nothing of it: the replica answers, without the run...
            other = await theirs.get(runs)
            assert (other.headers[READ_POOL], ids(other)) == ("replica", [])
            # ...unless the client sends the write's position back (the read-after LSN).
            after = await theirs.get(runs, headers={READ_AFTER_LSN: written})
            assert (after.headers[READ_POOL], ids(after)) == ("primary", [run_id])

        # Once the replica has replayed the write, it serves both.
        await served_by(mine, runs, "replica", until=lambda r: ids(r) == [run_id])
        await served_by(
            theirs, runs, "replica", {READ_AFTER_LSN: written}, lambda r: ids(r) == [run_id]
        )
        bad = await theirs.get(runs, headers={READ_AFTER_LSN: "yesterday"})
        assert READ_AFTER_LSN in assert_problem(bad, 400)["detail"]


async def test_reads_fall_back_to_the_primary_while_the_replica_lags(
    pair: standby.Pair, primary_pool: asyncpg.Pool[Any]
) -> None:
    async with serving(pair, primary_pool, read_max_lag_s=0.5) as http:
        job = await create_job(http)
        runs = f"/jobs/{job['id']}/runs"
        await served_by(http, runs, "replica")

        async with replay_paused(pair):
            run = await store.run_trigger(primary_pool, "default", job["id"])
            assert run is not None
            ready = await poll_json(
                http, "/readyz", lambda body: body.get("read_replica") == "lagging", WAIT_S
            )
            assert ready["status"] == "ready"
            assert ready["read_replica_lag_s"] >= 0.5
            assert (await http.get("/readyz")).status_code == 200
            behind = await http.get(runs)
            assert (behind.headers[READ_POOL], ids(behind)) == ("primary", [run.id])

        await poll_json(http, "/readyz", lambda body: body.get("read_replica") == "ok", WAIT_S)
        await served_by(http, runs, "replica", until=lambda r: ids(r) == [run.id])


async def test_reads_fall_back_to_the_primary_while_the_replica_is_down_and_readiness_stays(
    pair: standby.Pair, primary_pool: asyncpg.Pool[Any]
) -> None:
    async with serving(pair, primary_pool) as http:
        job = await create_job(http)
        runs = f"/jobs/{job['id']}/runs"
        await served_by(http, runs, "replica")
        try:
            await asyncio.to_thread(pair.standby.stop, "fast")
            # At once, before a check may have noticed: the failed read goes to the primary.
            at_once = await http.get(runs)
            assert (at_once.status_code, at_once.headers[READ_POOL]) == (200, "primary")
            down = await poll_json(
                http, "/readyz", lambda body: body.get("read_replica") == "down", WAIT_S
            )
            assert (down["status"], down["read_replica_lag_s"]) == ("ready", None)
            assert (await http.get("/readyz")).status_code == 200
            later = await http.get(runs)
            assert (later.status_code, later.headers[READ_POOL]) == (200, "primary")
        finally:
            await asyncio.to_thread(pair.standby.start)
        # Back: the same pool reconnects and the replica serves again.
        await poll_json(http, "/readyz", lambda body: body.get("read_replica") == "ok", WAIT_S)
        await served_by(http, runs, "replica")


async def test_a_read_url_that_is_no_standby_serves_nothing(
    pair: standby.Pair, primary_pool: asyncpg.Pool[Any]
) -> None:
    # The primary's own URL given as the replica's, as a misconfiguration would.
    async with serving(pair, primary_pool, read_url=pair.primary.database_url(DATABASE)) as http:
        ready = (await http.get("/readyz")).json()
        assert (ready["status"], ready["read_replica"]) == ("ready", "down")
        job = await create_job(http)
        response = await http.get(f"/jobs/{job['id']}/runs")
        assert (response.status_code, response.headers[READ_POOL]) == (200, "primary")
