"""Versioned migrations (store/migrate.py, store/migrations/): an empty database made from
schema.sql and an old one migrated end in the same catalog; an upgrade from every schema
released before keeps every row and the engine runs on; the record, --status and
--dry-run; what a newer or an older release meets.

tests/fixtures/schema_v3.sql and schema_v4.sql are schema.sql as released at schema
versions 3 (commit 41b442b) and 4 (ea3fc4c), the last before versioned migrations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from scheduler_svc import store
from scheduler_svc.config import Settings
from scheduler_svc.engine.worker import Worker
from scheduler_svc.store import db, migrate
from scheduler_svc.targets import Deliverer
from scheduler_svc.targets.http import WebhookClient
from tests.helpers import cli_env, run_cli, scratch_database
from tests.replicas import eventually, missing_ticks

pytestmark = pytest.mark.timeout(90)

FIXTURES = Path(__file__).parent / "fixtures"
RELEASED = {3: FIXTURES / "schema_v3.sql", 4: FIXTURES / "schema_v4.sql"}
EPOCH_DAY = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
async def empty_url(postgres_server_url: str) -> AsyncIterator[str]:
    async with scratch_database(postgres_server_url, "scheduler_migrations") as url:
        yield url


async def connect(url: str) -> asyncpg.Connection[Any]:
    return await asyncpg.connect(db.connect_options(url)[0])


# What a schema is, for comparing two: every object of ours but the partitions themselves
# (the days of job_runs depend on when each was made, and a migrated database keeps its
# old runs in job_runs_before_v5).
CATALOG = {
    "tables": """
        SELECT c.relname, c.relkind, c.reloptions, pg_get_partkeydef(c.oid) AS partition_key
        FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v')
          AND NOT c.relispartition
        ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v')
          AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY c.relname, a.attnum""",
    # Not NOT NULL constraints, which PostgreSQL 18 records here under names it makes up
    # (a migrated job_runs had job_runs_attempt_not_null1 where a fresh one has
    # job_runs_attempt_not_null); "columns" compares which columns are NOT NULL.
    "constraints": """
        SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        WHERE c.relnamespace = 'public'::regnamespace AND NOT c.relispartition
          AND k.contype <> 'n'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        WHERE c.relnamespace = 'public'::regnamespace AND NOT c.relispartition
        ORDER BY 1""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'public'::regnamespace AND NOT c.relispartition
          AND NOT t.tgisinternal
        ORDER BY 1, 2""",
    "sequences": """
        SELECT sequencename, data_type, increment_by FROM pg_sequences
        WHERE schemaname = 'public' ORDER BY 1""",
    "event_triggers": """
        SELECT evtname, evtevent, evtfoid::regproc::text, evttags FROM pg_event_trigger
        ORDER BY 1""",
    "rows": """
        SELECT (SELECT version FROM schema_version),
               (SELECT array_agg(version ORDER BY version) FROM schema_migrations),
               (SELECT json_agg(h ORDER BY name)::text FROM history_tables h)""",
}


async def catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await connect(url)
    try:
        return {name: [tuple(r) for r in await conn.fetch(q)] for name, q in CATALOG.items()}
    finally:
        await conn.close()


async def migrate_url(url: str) -> int:
    conn = await connect(url)
    try:
        return await migrate.migrate(conn)
    finally:
        await conn.close()


async def apply_released(url: str, version: int) -> None:
    """Make the database as release `version` did: its whole schema.sql."""
    conn = await connect(url)
    try:
        await conn.execute(RELEASED[version].read_text())
    finally:
        await conn.close()


@pytest.mark.parametrize("version", sorted(RELEASED))
async def test_a_migrated_database_has_the_catalog_of_one_made_from_schema_sql(
    postgres_server_url: str, version: int
) -> None:
    async with (
        scratch_database(postgres_server_url, "scheduler_fresh") as fresh,
        scratch_database(postgres_server_url, "scheduler_migrated") as migrated,
    ):
        assert await migrate_url(fresh) == migrate.SCHEMA_VERSION
        await apply_released(migrated, version)
        assert await migrate_url(migrated) == migrate.SCHEMA_VERSION
        made, upgraded = await catalog(fresh), await catalog(migrated)
        for part in CATALOG:
            assert made[part] == upgraded[part], part


# --- an upgrade with data -------------------------------------------------------------

POPULATE = """
INSERT INTO jobs (tenant, name, schedule, status, next_run_at, overlap)
SELECT 'default', 'ticking ' || i, '@every 1s', 'active', $1::timestamptz, 'allow'
FROM generate_series(1, 3) AS i;
INSERT INTO jobs (tenant, name, schedule, status, next_run_at, idempotency_key, request_hash)
VALUES ('other', 'paused', '0 3 * * *', 'paused', NULL, 'key-1', 'hash-1');
-- A history: 300 finished runs over the last days.
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, attempt, started_at, finished_at,
                      duration_ms, worker)
SELECT j.id, 'default', now() - make_interval(mins => i * 17), 'succeeded', 1,
       now() - make_interval(mins => i * 17), now() - make_interval(mins => i * 17), 1.5, 'old'
FROM generate_series(1, 100) AS i, (SELECT id FROM jobs WHERE status = 'active') j;
-- Mid-flight: one running under a lease that has run out (its replica died), one due.
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, attempt, started_at, worker,
                      lease_expires_at, trigger)
SELECT min(id), 'default', now() - interval '3 s', 'running', 1, now() - interval '3 s',
       'gone', now() - interval '1 s', 'manual'
FROM jobs WHERE status = 'active';
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, next_attempt_at, trigger)
SELECT max(id), 'default', now() - interval '2 s', 'pending', now() - interval '1 s', 'manual'
FROM jobs WHERE status = 'active';
INSERT INTO api_keys (prefix, key_hash, tenant, scopes)
VALUES ('sk_live_abcd', '\\x00ff', 'default', '{jobs:read}');
"""

TABLES = ("jobs", "job_runs", "api_keys")


async def rows(conn: asyncpg.Connection[Any], table: str) -> dict[int, dict[str, Any]]:
    return {r["id"]: dict(r) for r in await conn.fetch(f"SELECT * FROM {table}")}


@pytest.fixture
async def engine_on(make_settings: Any, http: WebhookClient) -> AsyncIterator[Any]:
    """Start a worker on the database at a URL; stop it (and its pool) afterwards."""
    started: list[tuple[Worker, Any]] = []

    async def start(url: str) -> Any:
        pool = await db.create_pool(url)
        settings: Settings = make_settings(
            database_url=url, role="worker", worker_id="upgraded", lease_margin_s=1
        )
        worker = Worker(settings, pool, Deliverer(http, allow_private=True))
        worker.start()
        started.append((worker, pool))
        return pool

    yield start
    for worker, pool in started:
        await worker.stop()
        await pool.close()


@pytest.mark.slow
@pytest.mark.parametrize("version", sorted(RELEASED))
async def test_an_upgrade_keeps_every_row_and_the_engine_runs_on_without_a_missed_tick(
    empty_url: str, version: int, engine_on: Any
) -> None:
    await apply_released(empty_url, version)
    conn = await connect(empty_url)
    try:
        first_tick = (await conn.fetchval("SELECT now()")).replace(microsecond=0) + timedelta(
            seconds=2
        )
        await conn.execute(POPULATE.replace("$1::timestamptz", f"'{first_tick.isoformat()}'"))
        before = {table: await rows(conn, table) for table in TABLES}
        assert await migrate.migrate(conn) == migrate.SCHEMA_VERSION
        after = {table: await rows(conn, table) for table in TABLES}
    finally:
        await conn.close()
    for table in TABLES:
        assert after[table].keys() == before[table].keys(), table
        for key, row in before[table].items():
            assert {c: after[table][key][c] for c in row} == row, (table, key)

    pool = await engine_on(empty_url)
    ticking = [j for j in before["jobs"].values() if j["status"] == "active"]
    mid_flight = [r for r in before["job_runs"].values() if r["status"] in ("running", "pending")]
    last_tick = first_tick + timedelta(seconds=3)

    async def settled() -> bool:
        done: bool = await pool.fetchval(
            "SELECT count(*) = $3 FROM job_runs WHERE status = 'succeeded'"
            " AND (id = ANY($1) OR (scheduled_for BETWEEN $2 AND $4 AND trigger = 'schedule'))",
            [r["id"] for r in mid_flight],
            first_tick,
            len(mid_flight) + 4 * len(ticking),
            last_tick,
        )
        return done

    await eventually(settled, 20, "the runs in flight and four seconds of ticks")
    for job in ticking:
        ticks = await pool.fetch(
            "SELECT id, scheduled_for FROM job_runs WHERE job_id = $1 AND trigger = 'schedule'"
            " AND scheduled_for >= $2 AND scheduled_for <= $3 ORDER BY scheduled_for",
            job["id"],
            first_tick,
            last_tick,
        )
        assert missing_ticks([t["scheduled_for"] for t in ticks], first_tick, last_tick) == []
        assert len(ticks) == 4  # each tick once
        for tick in ticks:  # new runs' ids tell their day
            day = tick["scheduled_for"].astimezone(UTC).date()
            assert EPOCH_DAY.date() + timedelta(days=tick["id"] >> 37) == day
    for run in mid_flight:  # old ids are still found by id
        found = await store.run_get(pool, "default", run["id"])
        assert found is not None and found.status == "succeeded"
    history = await store.runs_list(pool, "default", ticking[0]["id"], before_id=None, limit=200)
    assert len(history) > 100 and [r.id for r in history] == sorted(
        (r.id for r in history), reverse=True
    )


# --- the record, --status and --dry-run -------------------------------------------------


@pytest.mark.slow
async def test_status_and_dry_run_say_what_migrating_would_do_and_change_nothing(
    empty_url: str, tmp_path: Path
) -> None:
    await apply_released(empty_url, 4)
    status = run_cli(tmp_path, "migrate", "--status", env=cli_env(empty_url))
    assert status.returncode == 0, status.stderr
    assert status.stdout.split() == [
        "0004_base",
        "pending",
        "0005_partitioned_runs",
        "pending",
        "0006_job_keys",
        "pending",
        "0007_operator_controls",
        "pending",
        "0008_console",
        "pending",
        "0009_unfinished_floor",
        "pending",
    ]
    dry = run_cli(tmp_path, "migrate", "--dry-run", env=cli_env(empty_url))
    assert dry.returncode == 0, dry.stderr
    assert "-- would apply 0005_partitioned_runs, step 3 of 3: swap in" in dry.stdout
    conn = await connect(empty_url)
    try:
        assert (
            await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'job_runs'")
            == "r"
        )
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()

    applied = run_cli(tmp_path, "migrate", env=cli_env(empty_url))
    *built, last = applied.stdout.strip().splitlines()
    assert last == f"schema at version {migrate.SCHEMA_VERSION}"
    # Before it, the index each partition of job_runs needs for job_runs_search (0007
    # made it ON ONLY job_runs), built concurrently.
    assert "built index job_runs_default_tenant_status_id_idx" in built
    assert all(line.startswith("built index job_runs_") for line in built), built
    status = run_cli(tmp_path, "migrate", "--status", env=cli_env(empty_url))
    assert [line.split()[:2] for line in status.stdout.splitlines()] == [
        ["0004_base", "applied"],
        ["0005_partitioned_runs", "applied"],
        ["0006_job_keys", "applied"],
        ["0007_operator_controls", "applied"],
        ["0008_console", "applied"],
        ["0009_unfinished_floor", "applied"],
    ]
    assert (
        run_cli(tmp_path, "migrate", "--dry-run", env=cli_env(empty_url)).stdout.strip()
        == "nothing to apply"
    )


@pytest.mark.slow
async def test_a_migration_edited_after_it_ran_is_refused_in_one_line(
    empty_url: str, tmp_path: Path
) -> None:
    await migrate_url(empty_url)
    conn = await connect(empty_url)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = 'other' WHERE version = 5")
    finally:
        await conn.close()
    result = run_cli(tmp_path, "migrate", env=cli_env(empty_url))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "scheduler-svc: migration 0005_partitioned_runs was changed after it was applied to"
        " this database (its checksum differs); restore the file as released"
    ]


async def test_a_database_a_newer_release_migrated_is_left_as_it_is(empty_url: str) -> None:
    await migrate_url(empty_url)
    conn = await connect(empty_url)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (99, 'later', 'x');"
            "UPDATE schema_version SET version = 99"
        )
        assert await migrate.migrate(conn) == 99
        states = (await migrate.plan(conn)).states
        assert [(s.version, s.state) for s in states][-1] == (99, "newer")
    finally:
        await conn.close()


async def test_replicas_starting_together_migrate_once(empty_url: str) -> None:
    await apply_released(empty_url, 3)
    conns = [await connect(empty_url) for _ in range(4)]
    try:
        versions = await asyncio.gather(*(migrate.migrate(c) for c in conns))
        recorded = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY 1")
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert versions == [migrate.SCHEMA_VERSION] * 4
    assert [r["version"] for r in recorded] == [m.version for m in migrate.MIGRATIONS]


async def test_a_release_before_versioned_migrations_is_stopped_with_a_clear_error(
    empty_url: str,
) -> None:
    """What the previous release does at start (its whole schema.sql) fails at its first
    statement, saying why and what to do, and changes nothing."""
    await migrate_url(empty_url)
    conn = await connect(empty_url)
    try:
        if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            pytest.skip("the guard is an event trigger, which needs a superuser")
        before = await catalog(empty_url)
        with pytest.raises(asyncpg.PostgresError) as raised:
            await conn.execute(RELEASED[4].read_text())
    finally:
        await conn.close()
    assert str(raised.value) == (
        f"this database is at scheduler-svc schema version {migrate.SCHEMA_VERSION}, newer than"
        " this release knows: run the release that migrated it (upgrade order: migrate, then"
        " roll the replicas)"
    )
    assert await catalog(empty_url) == before


# --- indexes made ON ONLY a partitioned table, completed concurrently -------------------


async def at_schema_6(url: str) -> None:
    """The database as the release of schema 6 left it: released schema 4, then 5 and 6."""
    await apply_released(url, 4)
    conn = await connect(url)
    try:
        for m in migrate.MIGRATIONS:
            if m.version <= 6:
                await migrate._apply(conn, m)
    finally:
        await conn.close()


# 20,000 runs of two tenants, 2 % failed, from yesterday (in job_runs_before_v5) to the
# days ahead (day partitions) and a month ahead (job_runs_default).
RUNS_OVER_PARTITIONS = """
WITH job AS (
    INSERT INTO jobs (tenant, name, schedule, status) VALUES ('a', 'j', '@every 1h', 'paused')
    RETURNING id
)
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, finished_at)
SELECT job.id, CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END,
       now() + make_interval(days => CASE WHEN i % 5 = 4 THEN 30 ELSE i % 5 - 1 END, secs => i),
       CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END, now()
FROM job, generate_series(1, 20000) AS i
"""
SEARCH_INDEX_VALID = """
SELECT indisvalid FROM pg_index WHERE indexrelid = 'job_runs_search'::regclass
"""


def plan_indexes(plan: Any) -> set[str]:
    """The indexes a JSON plan reads, and whether it scans a table whole ('seq scan')."""
    found = set()
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if "Index Name" in node:
            found.add(node["Index Name"])
        if node["Node Type"] == "Seq Scan":
            found.add("seq scan")
        nodes += node.get("Plans", [])
    return found


async def test_complete_indexes_builds_each_partitions_index_and_makes_the_parent_valid(
    empty_url: str,
) -> None:
    await at_schema_6(empty_url)
    conn = await connect(empty_url)
    other = await connect(empty_url)
    try:
        await conn.execute(RUNS_OVER_PARTITIONS)
        assert await migrate.migrate(conn) == migrate.SCHEMA_VERSION
        # Migration 0007 read no partition: the index is on job_runs alone, and invalid.
        assert await conn.fetchval(SEARCH_INDEX_VALID) is False
        partitions = [
            r["partition"]
            for r in await conn.fetch("SELECT partition FROM history_partitions('job_runs')")
        ]
        assert {"job_runs_before_v5", "job_runs_default"} < set(partitions)
        assert len(partitions) >= 8
        names = {p: migrate.partition_index_name(p, "tenant_status_id") for p in partitions}
        # A build interrupted half way (here by a statement timeout while a writer holds
        # the partition) leaves an invalid index of the very name to build.
        leftover = names["job_runs_default"]
        await other.execute("BEGIN; LOCK TABLE job_runs_default IN ROW EXCLUSIVE MODE")
        await conn.execute("SET statement_timeout = '300ms'")
        with pytest.raises(asyncpg.QueryCanceledError):
            await conn.execute(
                f"CREATE INDEX CONCURRENTLY {leftover} "
                "ON job_runs_default (tenant, status, id DESC)"
            )
        await conn.execute("RESET statement_timeout")
        await other.execute("ROLLBACK")
        assert await conn.fetchval(
            "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = $1::regclass", leftover
        )
        # Only one session builds: while another holds the lock, nothing is done.
        await other.execute("SELECT pg_advisory_lock($1)", migrate.INDEX_LOCK_KEY)
        assert await migrate.complete_indexes(conn) == []
        await other.execute("SELECT pg_advisory_unlock($1)", migrate.INDEX_LOCK_KEY)

        built = await migrate.complete_indexes(conn)

        assert sorted(built) == sorted(names.values())
        assert await conn.fetchval(SEARCH_INDEX_VALID) is True
        assert await conn.fetchval("SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
        attached = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'job_runs_search'::regclass"
        )
        assert sorted(r["relname"] for r in attached) == sorted(names.values())
        assert await migrate.complete_indexes(conn) == []  # nothing left
        await conn.execute("ANALYZE job_runs")
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT id FROM job_runs "
            "WHERE tenant = 'a' AND status = 'failed' ORDER BY id DESC LIMIT 20"
        )
        used = plan_indexes(msgspec.json.decode(plan))
        assert used and used <= set(names.values()), used
    finally:
        await other.close()
        await conn.close()


async def test_partition_index_names_are_those_postgresql_gives(conn: Any) -> None:
    """Checked against indexes PostgreSQL makes through a partitioned index, the long names
    it cuts included (in a transaction that is rolled back)."""
    cases = [("short", "tenant_status_id"), ("p" * 60, "tenant_status_id"), ("q" * 20, "c" * 50)]
    for partition, columns in cases:
        column_names = ["tenant", "status", "id"] if "_" in columns else [columns]
        await conn.execute(
            f"CREATE TABLE parent_{len(partition)} ("
            + ", ".join(f'"{c}" text' for c in column_names)
            + f") PARTITION BY LIST ({column_names[0]});"
            f"CREATE INDEX ON parent_{len(partition)} ("
            + ", ".join(f'"{c}"' for c in column_names)
            + f'); CREATE TABLE "{partition}" PARTITION OF parent_{len(partition)} DEFAULT'
        )
        made = await conn.fetchval(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = $1::regclass",
            f'"{partition}"',
        )
        assert made.strip('"') == migrate.partition_index_name(partition, columns)
