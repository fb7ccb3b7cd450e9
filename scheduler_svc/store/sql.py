"""The statements of queries.sql by name, the connection types, and the few queries
that are about the database itself (schema lock and version, clock, ping)."""

from __future__ import annotations

import re
from datetime import datetime
from importlib.resources import files
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection, plain or pooled: what a transaction runs on.
Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
# Anything that runs a statement: a connection or the pool itself.
Conn: TypeAlias = "Connection | asyncpg.Pool[Any]"


def load_queries(text: str) -> dict[str, str]:
    """Split queries.sql into {name: statement} at its `-- name --` lines."""
    blocks = re.split(r"^-- ([a-z_]+) --\n", text, flags=re.MULTILINE)
    return {name: sql.strip() for name, sql in zip(blocks[1::2], blocks[2::2], strict=True)}


QUERIES = load_queries(files("scheduler_svc.store").joinpath("queries.sql").read_text())


async def schema_lock(conn: Conn, key: int) -> None:
    """Take the schema advisory lock until the end of the caller's transaction."""
    await conn.execute(QUERIES["schema_lock"], key)


async def schema_version_get(conn: Conn) -> int:
    """The schema version recorded in the database."""
    version: int = await conn.fetchval(QUERIES["schema_version_get"])
    return version


async def db_now(conn: Conn) -> datetime:
    """The database clock."""
    now: datetime = await conn.fetchval(QUERIES["db_now"])
    return now


async def ping(conn: Conn) -> None:
    """Fail unless the connection answers."""
    await conn.fetchval(QUERIES["ping"])
