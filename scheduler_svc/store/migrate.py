"""Versioned migrations: what the database has had, what it lacks, and applying it.

The migrations are `migrations/NNNN_name.sql` in this package; NNNN is the schema
version the file brings a database to. An empty database is created from schema.sql
(the whole current schema) and every migration is recorded as applied; a database with
a schema gets, in order, the migrations it has no record of. A database from before
versioned migrations has no records at all: it gets all of them, which is safe because
the first (0004) is the old schema.sql, idempotent, and brings any earlier version to 4.

A migration may be split into steps by `-- step: what it does` lines; each step commits
on its own (so a long check can run under a lock that lets writes go on before a short
exclusive one), and each must be safe to run again, since a migration is recorded only
when its last step commits. Replicas migrate under a session advisory lock, so that
only one does, and wait for it: the releases before versioned migrations took the same
key per transaction.

A database with migrations this release does not know (a newer release migrated it) is
left as it is: every migration keeps the previous release working (expand now, contract
a release later), so this release runs on it.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any, Literal

from scheduler_svc.store import sql
from scheduler_svc.store.sql import Connection

# Arbitrary, fixed: the advisory lock key under which replicas migrate.
SCHEMA_LOCK_KEY = 0x5C4ED01E

_STEP = re.compile(r"^-- step: (.+)$", re.MULTILINE)


class MigrationError(Exception):
    """The database's migration record does not match this release's migrations."""


@dataclass(frozen=True, slots=True)
class Step:
    description: str
    sql: str


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    checksum: str
    steps: tuple[Step, ...]


def _load(filename: str, text: str) -> Migration:
    match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", filename)
    if match is None:
        raise MigrationError(f"migration file {filename!r} is not named NNNN_name.sql")
    pieces = _STEP.split(text)
    # Without step lines the whole file is one step, named after the file.
    steps = [Step(match[2].replace("_", " "), pieces[0])] if len(pieces) == 1 else []
    steps += [Step(d, sql) for d, sql in zip(pieces[1::2], pieces[2::2], strict=True)]
    checksum = hashlib.sha256(text.encode()).hexdigest()
    return Migration(int(match[1]), match[2], checksum, tuple(steps))


def load_migrations() -> tuple[Migration, ...]:
    """This release's migrations, in version order."""
    folder = files("scheduler_svc.store").joinpath("migrations")
    sql_files = (entry for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return tuple(sorted((_load(f.name, f.read_text()) for f in sql_files), key=lambda m: m.version))


MIGRATIONS = load_migrations()
# The version this release brings a database to, and expects it at.
SCHEMA_VERSION = MIGRATIONS[-1].version
SCHEMA_SQL = files("scheduler_svc.store").joinpath("schema.sql").read_text()

State = Literal["applied", "pending", "changed", "newer"]


@dataclass(frozen=True, slots=True)
class MigrationState:
    """A migration as the database and this release see it: applied (recorded with the
    same checksum), pending, changed (recorded with another checksum: the file was
    edited after it ran), or newer (recorded, but unknown to this release)."""

    version: int
    name: str
    state: State
    applied_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What migrating would do: create the schema whole (an empty database), or apply
    `pending` in order; nothing when both are empty."""

    create: bool
    pending: tuple[Migration, ...]
    states: tuple[MigrationState, ...]

    @property
    def empty(self) -> bool:
        return not self.create and not self.pending


async def plan(conn: Connection) -> Plan:
    """Compare the database's record with this release's migrations."""
    if not await sql.schema_exists(conn):
        fresh = tuple(MigrationState(m.version, m.name, "pending") for m in MIGRATIONS)
        return Plan(create=True, pending=(), states=fresh)
    recorded: dict[int, Any] = {}
    if await sql.schema_migrations_exist(conn):
        recorded = await sql.schema_migrations_get(conn)
    known = {m.version: m for m in MIGRATIONS}
    states: list[MigrationState] = []
    for m in MIGRATIONS:
        row = recorded.get(m.version)
        if row is None:
            states.append(MigrationState(m.version, m.name, "pending"))
        else:
            state: State = "applied" if row["checksum"] == m.checksum else "changed"
            states.append(MigrationState(m.version, m.name, state, row["applied_at"]))
    states += [
        MigrationState(v, r["name"], "newer", r["applied_at"])
        for v, r in sorted(recorded.items())
        if v not in known
    ]
    pending = tuple(known[s.version] for s in states if s.state == "pending")
    return Plan(create=False, pending=pending, states=tuple(states))


async def migrate(conn: Connection) -> int:
    """Bring the database to this release's schema (or leave a newer one as it is), one
    replica at a time; return the schema version it is at."""
    await sql.schema_lock(conn, SCHEMA_LOCK_KEY)
    try:
        todo = await plan(conn)
        changed = [s for s in todo.states if s.state == "changed"]
        if changed:
            names = ", ".join(f"{s.version:04d}_{s.name}" for s in changed)
            raise MigrationError(
                f"migration {names} was changed after it was applied to this database "
                "(its checksum differs); restore the file as released"
            )
        if todo.create:
            async with conn.transaction():
                await conn.execute(SCHEMA_SQL)
                for m in MIGRATIONS:
                    await _record(conn, m, 0.0)
        for m in todo.pending:
            await _apply(conn, m)
        return await sql.schema_version_get(conn)
    finally:
        await sql.schema_unlock(conn, SCHEMA_LOCK_KEY)


async def _apply(conn: Connection, migration: Migration) -> None:
    started = time.perf_counter()
    for i, step in enumerate(migration.steps):
        async with conn.transaction():
            await conn.execute(step.sql)
            if i == len(migration.steps) - 1:
                await _record(conn, migration, (time.perf_counter() - started) * 1000)


async def _record(conn: Connection, migration: Migration, duration_ms: float) -> None:
    await sql.schema_migrations_create(conn)
    await sql.schema_migration_record(
        conn, migration.version, migration.name, migration.checksum, duration_ms
    )


# Partitioned indexes made ON ONLY their table (migration 0007's job_runs_search) are
# invalid until every partition has an index attached: complete_indexes builds those.
# Arbitrary, fixed: the session advisory lock under which one session at a time does.
INDEX_LOCK_KEY = 0x5C4ED03E
# Attaching an index locks the partitioned index for a moment; wait no longer than this
# behind a long transaction (the next pass tries again).
ATTACH_LOCK_TIMEOUT = "10s"
_NAME_BYTES = 63  # NAMEDATALEN - 1


def partition_index_name(partition: str, columns: str) -> str:
    """The name PostgreSQL gives the index it makes on `partition` for a partitioned index
    on `columns` (ChooseRelationName: `<partition>_<columns>_idx`, the longer of the two
    parts cut first until it fits in 63 bytes, as makeObjectName does; names of ours are
    ASCII)."""
    room = _NAME_BYTES - len("_idx") - 1
    keep_table, keep_columns = len(partition), len(columns)
    while keep_table + keep_columns > room:
        if keep_table > keep_columns:
            keep_table -= 1
        else:
            keep_columns -= 1
    return f"{partition[:keep_table]}_{columns[:keep_columns]}_idx"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def complete_indexes(conn: Connection) -> list[str]:
    """Make every partitioned index of the schema valid: for each partition it lacks an
    index of, CREATE INDEX CONCURRENTLY the one PostgreSQL would have made through the
    parent (a leftover of an interrupted build is dropped and built again) and attach it,
    one at a time while writes go on; the names built. Outside any transaction (a
    CONCURRENTLY build cannot run in one), under a session advisory lock: while another
    session holds it, nothing (that session builds them)."""
    if conn.is_in_transaction():
        raise RuntimeError("complete_indexes must run outside a transaction")
    if not await sql.indexes_lock(conn, INDEX_LOCK_KEY):
        return []
    built: list[str] = []
    try:
        for todo in await sql.indexes_incomplete(conn):
            child = partition_index_name(todo.partition, todo.columns)
            valid = todo.loose.get(child)
            schema = _ident(todo.schema)
            if valid is False:  # a CONCURRENTLY build that stopped half way
                await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {schema}.{_ident(child)}")
            if not valid:
                unique = "UNIQUE " if todo.unique else ""
                await conn.execute(
                    f"CREATE {unique}INDEX CONCURRENTLY {_ident(child)} "
                    f"ON {schema}.{_ident(todo.partition)} USING {todo.definition}"
                )
                built.append(child)
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{ATTACH_LOCK_TIMEOUT}'")
                await conn.execute(
                    f"ALTER INDEX {schema}.{_ident(todo.index)} "
                    f"ATTACH PARTITION {schema}.{_ident(child)}"
                )
    finally:
        await sql.indexes_unlock(conn, INDEX_LOCK_KEY)
    return built
