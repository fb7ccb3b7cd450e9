"""The statements of queries.sql by name, the connection types, and the few queries
that are about the database itself (schema and migrations, clock, ping)."""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    """Wait for the schema advisory lock and hold it for this session."""
    await conn.execute(QUERIES["schema_lock"], key)


async def schema_unlock(conn: Conn, key: int) -> None:
    """Release the schema advisory lock."""
    await conn.execute(QUERIES["schema_unlock"], key)


async def schema_exists(conn: Conn) -> bool:
    """Whether the database has a schema of ours (else it is created from schema.sql)."""
    exists: bool = await conn.fetchval(QUERIES["schema_exists"])
    return exists


async def schema_migrations_exist(conn: Conn) -> bool:
    """Whether the database records migrations (not one from before they were versioned)."""
    exist: bool = await conn.fetchval(QUERIES["schema_migrations_exist"])
    return exist


async def schema_migrations_create(conn: Conn) -> None:
    """Create the record of migrations if it does not exist."""
    await conn.execute(QUERIES["schema_migrations_create"])


async def schema_migrations_get(conn: Conn) -> dict[int, asyncpg.Record]:
    """The migrations recorded as applied, by version: name, checksum, applied_at."""
    return {r["version"]: r for r in await conn.fetch(QUERIES["schema_migrations_get"])}


async def schema_migration_record(
    conn: Conn, version: int, name: str, checksum: str, duration_ms: float
) -> None:
    """Record a migration as applied."""
    await conn.execute(QUERIES["schema_migration_record"], version, name, checksum, duration_ms)


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


async def autovacuum_on(conn: Conn) -> bool:
    """Whether the server runs autovacuum (queries.sql says why it matters)."""
    on: bool = await conn.fetchval(QUERIES["autovacuum_on"])
    return on


async def older_releases_connected(conn: Conn) -> bool:
    """Whether a replica of a release before schema 7 is connected (queries.sql says why)."""
    connected: bool = await conn.fetchval(QUERIES["older_releases_connected"])
    return connected


@dataclass(frozen=True, slots=True)
class IncompleteIndex:
    """A partition that a partitioned index not yet valid has no index of."""

    index: str
    schema: str
    partition: str
    columns: str  # the index's column names joined by "_" ("expr" for an expression)
    definition: str  # from USING on: "btree (tenant, status, id DESC)"
    unique: bool
    loose: dict[str, bool]  # the partition's indexes of no partitioned index: valid?


async def indexes_incomplete(conn: Connection) -> list[IncompleteIndex]:
    """Each partition that each invalid partitioned index of this schema lacks an index of."""
    return [
        IncompleteIndex(
            index=r["index_name"],
            schema=r["schema"],
            partition=r["partition"],
            columns=r["columns"],
            definition=r["definition"],
            unique=r["is_unique"],
            loose={**dict.fromkeys(r["valid"], True), **dict.fromkeys(r["invalid"], False)},
        )
        for r in await conn.fetch(QUERIES["indexes_incomplete"])
    ]


async def indexes_lock(conn: Connection, key: int) -> bool:
    """Take the index builders' session lock unless another session holds it."""
    taken: bool = await conn.fetchval(QUERIES["indexes_lock"], key)
    return taken


async def indexes_unlock(conn: Connection, key: int) -> None:
    """Release the index builders' session lock."""
    await conn.fetchval(QUERIES["indexes_unlock"], key)
