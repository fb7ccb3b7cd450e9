"""The pool and the schema (scheduler_svc/store/db.py) against a real PostgreSQL: what a
session is set up with, the fair pool, applying schema.sql under its lock, and which
failures count as the database being away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from scheduler_svc.store import db, migrate
from tests.helpers import free_port, never_accepting
from tests.replicas import connect, eventually


def with_query(url: str, query: str) -> str:
    """`url` with `query` added to its query string."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="&".join(q for q in (parts.query, query) if q)))


async def session_settings(url: str, **pool_options: Any) -> dict[str, str]:
    """What a session of a pool made by create_pool(url, **pool_options) runs with."""
    names = ("application_name", "search_path", "synchronous_commit", "enable_seqscan")
    pool = await db.create_pool(url, max_size=1, **pool_options)
    try:
        async with pool.acquire() as conn:
            return {name: await conn.fetchval(f"SHOW {name}") for name in names}
    finally:
        await pool.close()


# --- what a session is set up with ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected_dsn", "settings"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql://u:p@h:5432/db", {}),
        (
            "postgresql://u:p@localhost:5432/scheduler_db?schema=public",
            "postgresql://u:p@localhost:5432/scheduler_db",
            {"search_path": "public"},
        ),
        (
            "postgresql://u@h/db?sslmode=disable&schema=app",
            "postgresql://u@h/db?sslmode=disable",
            {"search_path": "app"},
        ),
    ],
)
def test_prisma_schema_parameter_becomes_the_search_path(
    url: str, expected_dsn: str, settings: dict[str, str]
) -> None:
    assert db.connect_options(url) == (expected_dsn, settings)


async def test_a_worker_pool_names_its_sessions_commits_without_waiting_and_prices_out_scans(
    database_url: str,
) -> None:
    url = with_query(database_url, "schema=public")
    settings = await session_settings(url, durable=False, worker_id="w-7")
    assert settings == {
        "application_name": "scheduler-svc@9:w-7",
        "search_path": "public",
        "synchronous_commit": "off",
        "enable_seqscan": "off",
    }


async def test_a_default_pool_is_durable_and_named_after_the_service(
    database_url: str,
) -> None:
    settings = await session_settings(database_url)
    assert (
        settings["application_name"],
        settings["synchronous_commit"],
        settings["enable_seqscan"],
    ) == ("scheduler-svc@9", "on", "on")
    assert db.application_name("api-1") == "scheduler-svc@9:api-1"
    assert db.SESSION_SCHEMA_VERSION == migrate.SCHEMA_VERSION


async def test_json_and_jsonb_come_back_as_the_values_sent(pool: db.Pool) -> None:
    value = {"k": [1, "two", None, {"nested": True}], "n": 1.5}
    row = await pool.fetchrow("SELECT $1::jsonb AS b, $1::json AS j", value)
    assert row is not None
    assert (row["b"], row["j"]) == (value, value)


# --- applying the schema ---------------------------------------------------------------------


async def test_schema_applies_again_and_concurrently(database_url: str) -> None:
    dsn = db.connect_options(database_url)[0]
    conns = [await asyncpg.connect(dsn) for _ in range(6)]
    try:
        versions = await asyncio.gather(*(migrate.migrate(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert versions == [migrate.SCHEMA_VERSION] * 6


async def test_the_schema_is_applied_only_once_the_schema_lock_is_free(database_url: str) -> None:
    holder, applier = await connect(database_url), await connect(database_url)
    try:
        versions_before = await holder.fetch("SELECT * FROM schema_version")
        holding = holder.transaction()
        await holding.start()
        await holder.execute("SELECT pg_advisory_xact_lock($1)", migrate.SCHEMA_LOCK_KEY)
        applying = asyncio.create_task(migrate.migrate(applier))

        async def waits_for_the_lock() -> bool:
            waiting: bool = await holder.fetchval(
                "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $1"
                " AND locktype = 'advisory' AND NOT granted)",
                applier.get_server_pid(),
            )
            return waiting

        await eventually(waits_for_the_lock, 10, "apply_schema to wait for the schema lock")
        assert not applying.done()
        await holding.commit()
        assert await asyncio.wait_for(applying, 10) == migrate.SCHEMA_VERSION
        assert await holder.fetch("SELECT * FROM schema_version") == versions_before
    finally:
        await asyncio.gather(holder.close(), applier.close())


# --- which failures mean the database is away ------------------------------------------------


async def refused(database_url: str) -> None:
    await asyncpg.connect(f"postgresql://nobody@127.0.0.1:{free_port()}/none", timeout=5)


async def never_accepted(database_url: str) -> None:
    with never_accepting() as port:
        await asyncpg.connect(f"postgresql://nobody@127.0.0.1:{port}/none", timeout=0.2)


async def session_ended(database_url: str) -> None:
    """A statement on a session the server has ended (a restart ends every session)."""
    doomed, other = await connect(database_url), await connect(database_url)
    try:
        await other.execute("SELECT pg_terminate_backend($1)", doomed.get_server_pid())
        await doomed.fetchval("SELECT 1")
        await doomed.fetchval("SELECT 1")  # if the first still slipped through
    finally:
        doomed.terminate()
        await other.close()


async def statement_cancelled(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute("SET statement_timeout = '10ms'")
        await conn.execute("SELECT pg_sleep(5)")
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "failure",
    [refused, never_accepted, session_ended, statement_cancelled],
    ids=lambda f: f.__name__,
)
async def test_what_a_lost_or_restarting_database_raises_counts_as_a_database_error(
    database_url: str, failure: Callable[[str], Awaitable[Any]]
) -> None:
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the point is which kind it is
        await failure(database_url)
    assert isinstance(raised.value, db.DATABASE_ERRORS), repr(raised.value)


# --- the fair pool ----------------------------------------------------------------------------


async def test_connections_go_to_waiting_tasks_in_the_order_they_asked(database_url: str) -> None:
    # Requests arriving one per loop turn on a pool of two. asyncpg's own pool hands a
    # released connection to whoever asks next (asyncpg#1247): in this very run nearly
    # all of the 200 were overtaken by a later one.
    pool = await db.create_pool(database_url, max_size=2)
    served: list[int] = []

    async def request(i: int) -> None:
        async with pool.acquire() as conn:
            served.append(i)
            await conn.fetchval("SELECT 1")

    try:
        async with pool.acquire(), pool.acquire():  # both connections open before the run
            pass
        tasks = []
        for i in range(200):
            tasks.append(asyncio.create_task(request(i)))
            await asyncio.sleep(0)  # one loop turn, not a wait: the next one arrives
        await asyncio.gather(*tasks)
    finally:
        await pool.close()
    assert served == list(range(200))


async def test_a_wait_for_a_connection_that_ends_early_gives_back_its_turn(
    database_url: str,
) -> None:
    pool = await db.create_pool(database_url, max_size=2)
    try:
        held = [await pool.acquire() for _ in range(2)]
        with pytest.raises(TimeoutError):
            await pool.acquire(timeout=0.05)
        cancelled = asyncio.create_task(pool.fetchval("SELECT 1"))
        await asyncio.sleep(0)  # until it waits for a turn
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        for conn in held:
            await pool.release(conn)
        # Both turns are free again: two connections at once, and each answers.
        async with asyncio.timeout(5), pool.acquire() as one, pool.acquire() as two:
            assert [await one.fetchval("SELECT 1"), await two.fetchval("SELECT 2")] == [1, 2]
    finally:
        await pool.close()
