"""The asyncpg pool: connection settings and JSON codecs."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import msgspec

# What a lost or restarting database raises: loops wait these out and carry on.
# InternalClientError too: when the server ends a session (a restart), a pooled
# connection can take its next statement between the server's FATAL message and the
# socket closing, and asyncpg then says "cannot switch to state 12; another
# operation (2) is in progress" (asyncpg#1069). The connection closes a moment later
# and the pool replaces it; one worker stopped on it in a database-restart test.
DATABASE_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

if TYPE_CHECKING:
    Pool = asyncpg.Pool[Any]
else:  # Litestar reads handler annotations at run time, where asyncpg.Pool takes no parameters.
    Pool = asyncpg.Pool


def connect_options(dsn: str) -> tuple[str, dict[str, str]]:
    """Split a DATABASE_URL into what asyncpg takes: the DSN and server settings.

    The old service's Prisma URLs carry `?schema=public`, which PostgreSQL does not
    know; it becomes the search_path so those URLs keep working unchanged.
    """
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    settings = {"search_path": schemas[-1]} if schemas else {}
    kept = [(key, value) for key, value in query if key != "schema"]
    return urlunsplit(parts._replace(query=urlencode(kept))), settings


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            schema="pg_catalog",
            encoder=lambda value: msgspec.json.encode(value).decode(),
            decoder=msgspec.json.decode,
        )


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Give a connection back to the pool as it is.

    asyncpg's default reset (RESET ALL, UNLISTEN *, CLOSE ALL, unlock advisory locks)
    is one more round trip per acquire; nothing here leaves session state behind:
    settings are SET LOCAL, advisory locks are per transaction, LISTEN has its own
    connection. asyncpg still rolls back any open transaction.
    """


class FairPool(asyncpg.Pool):
    """asyncpg's pool, serving tasks that wait for a connection in the order they came.

    asyncpg gives a released connection to whichever task asks for one next, so a task
    that has been waiting can lose it to newcomers again and again (asyncpg#1247).
    With 50 API requests in flight on 10 connections that made p99 latency four times
    the median. Here a FIFO semaphore with a permit per connection comes first (asyncio's
    Semaphore wakes waiters in order and makes newcomers queue behind them); whoever
    holds a permit finds a connection free.
    """

    def __init__(self, *args: Any, max_size: int, **kwargs: Any) -> None:
        super().__init__(*args, max_size=max_size, **kwargs)
        self._turns = asyncio.Semaphore(max_size)

    # Both keep asyncpg's signatures, timeout parameters included.
    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109
        # Pool.acquire, fetch, execute and the rest all come through here and release().
        if timeout is None:
            await self._turns.acquire()
        else:
            deadline = asyncio.get_running_loop().time() + timeout
            await asyncio.wait_for(self._turns.acquire(), timeout)
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            return await super()._acquire(timeout)  # type: ignore[misc]
        except BaseException:
            self._turns.release()
            raise

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            await super().release(connection, timeout=timeout)
        finally:
            self._turns.release()


# The schema version this release's sessions announce (application_name); migrate.py's
# SCHEMA_VERSION, which this module cannot import (migrate imports it).
SESSION_SCHEMA_VERSION = 9


def application_name(worker_id: str | None = None) -> str:
    """The application_name of a replica's sessions, `scheduler-svc@<schema version>:<worker
    id>`, by which pg_stat_activity tells replicas apart (PostgreSQL keeps its first 63
    bytes). The version comes first so that it survives that cut: a feature whose rows the
    release before it cannot read waits until no session of that release is left (releases
    before schema 7 named theirs `scheduler-svc:<worker id>`; store.older_releases_connected)."""
    name = f"scheduler-svc@{SESSION_SCHEMA_VERSION}"
    return f"{name}:{worker_id}" if worker_id else name


async def create_pool(
    dsn: str, *, max_size: int = 10, durable: bool = True, worker_id: str | None = None
) -> Pool:
    """Open a pool to `dsn` with JSON codecs installed on every connection; its sessions
    are named after `worker_id` (application_name).

    `durable=False` commits without waiting for the WAL flush: the worker's pool. A
    lease lost to a database crash only repeats an attempt (under the same idempotency
    key), which at-least-once delivery allows, and it saves an fsync per claim. The
    scheduler's transactions and the exchanges that record results ask for a durable
    commit themselves (runs_materialize, runs_exchange: a lost result would make
    overlap skip ticks), and the API's pool stays durable: a 201 means the job is on disk.
    """
    url, server_settings = connect_options(dsn)
    # JIT off: a statement over every partition of job_runs has plan costs past the JIT
    # thresholds, and compiling it takes far longer than running it (bench/README.md).
    server_settings = {**server_settings, "jit": "off"}
    if not durable:
        server_settings = {
            **server_settings,
            "synchronous_commit": "off",
            # The worker's statements run thousands of times a second with parameters
            # that do not change their best plan; custom plans would be planned anew on
            # every call, over every partition of job_runs. Generic ones prune the
            # partitions when they run.
            "plan_cache_mode": "force_generic_plan",
            # Every statement of the engine finds its rows through an index, by design.
            # A generic plan is kept until an ANALYZE (or DDL) invalidates it, and one
            # made while a day's partition of job_runs was empty, or held a few pages,
            # scans that partition once per job probed. As the day fills, a due claim
            # grows from milliseconds to seconds until autovacuum's next ANALYZE of
            # the partition: on a database analyzed while new, and each midnight (UTC)
            # for the days ahead that an operator's ANALYZE found empty. With
            # sequential scans priced out, a plan takes the index whatever the
            # partition held when it was made; a table without a usable index is
            # still scanned (bench/README.md, round two, part six).
            "enable_seqscan": "off",
        }
    # asyncpg.create_pool with its defaults, but building a FairPool.
    pool: Pool = await FairPool(
        url,
        min_size=1,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        init=_init_connection,
        reset=_keep_session,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        server_settings={"application_name": application_name(worker_id), **server_settings},
    )
    return pool
