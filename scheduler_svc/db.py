"""The asyncpg pool: connection settings, JSON codecs and applying schema.sql."""

from __future__ import annotations

import asyncio
import re
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import msgspec

from scheduler_svc import store

SCHEMA_SQL = files("scheduler_svc").joinpath("schema.sql").read_text()
# The version schema.sql brings a database to: the one number written in its last INSERT.
SCHEMA_VERSION = int(
    re.search(r"INSERT INTO schema_version \(version\) VALUES \((\d+)\)", SCHEMA_SQL).group(1)  # type: ignore[union-attr]
)
# What a lost or restarting database raises: loops wait these out and carry on.
DATABASE_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

# Arbitrary, fixed: the advisory lock key under which replicas apply the schema.
SCHEMA_LOCK_KEY = 0x5C4ED01E

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


async def create_pool(dsn: str, *, max_size: int = 10, durable: bool = True) -> Pool:
    """Open a pool to `dsn` with JSON codecs installed on every connection.

    `durable=False` commits without waiting for the WAL flush: the worker's pool. A
    lease or a result lost to a database crash only repeats an attempt (under the
    same idempotency key), which at-least-once delivery allows, and it saves an fsync
    per batch. The scheduler's transactions ask for a durable commit themselves
    (ticks_record), and the API's pool stays durable: a 201 means the job is on disk.
    """
    url, server_settings = connect_options(dsn)
    if not durable:
        server_settings = {
            **server_settings,
            "synchronous_commit": "off",
        }
    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        server_settings={"application_name": "scheduler-svc", **server_settings},
    )
    assert pool is not None
    return pool


async def apply_schema(conn: store.Connection) -> int:
    """Bring the database to schema.sql under an advisory lock; return its schema version."""
    async with conn.transaction():
        await store.schema_lock(conn, SCHEMA_LOCK_KEY)
        await conn.execute(SCHEMA_SQL)
        return await store.schema_version_get(conn)
