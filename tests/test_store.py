"""The store and the schema against a real PostgreSQL (the pool and applying the schema:
test_db.py)."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from scheduler_svc import store
from scheduler_svc.models import JobSpec
from tests.factories import audited

SPEC = JobSpec(
    name="job",
    attributes={"k": [1, "two"]},
    schedule="@every 1m",
    timezone="UTC",
    target={"type": "log"},
    max_attempts=3,
    backoff_s=10.0,
    backoff_max_s=3600.0,
    timeout_s=30,
    misfire_policy="run_once",
    misfire_grace_s=60,
    overlap="forbid",
    paused=False,
)
SOON = datetime(2030, 1, 1, tzinfo=UTC)
AUDITED = audited(SPEC, "active")


def test_every_query_has_one_store_function_of_its_name() -> None:
    functions = {
        name
        for name, fn in inspect.getmembers(store, inspect.iscoroutinefunction)
        if fn.__module__.startswith(f"{store.__name__}.")  # store's own modules
    }
    assert set(store.QUERIES) == functions


def test_queries_file_parses_into_named_statements() -> None:
    queries = store.load_queries("-- a_one --\n-- what\nSELECT 1;\n\n-- b_two --\nSELECT 2;\n")
    assert queries == {"a_one": "-- what\nSELECT 1;", "b_two": "SELECT 2;"}


async def test_insert_and_get_round_trip_json(conn: Any) -> None:
    row = await store.job_insert(conn, "t1", SPEC, status="active", next_run_at=SOON, **AUDITED)
    assert row is not None
    assert row.attributes == {"k": [1, "two"]}
    assert row.next_run_at == SOON
    assert row.version == 1
    assert await store.job_get(conn, "t1", row.id) == row


async def test_another_tenant_sees_nothing(conn: Any) -> None:
    row = await store.job_insert(conn, "t1", SPEC, status="active", next_run_at=SOON, **AUDITED)
    assert row is not None
    assert await store.job_get(conn, "t2", row.id) is None
    assert await store.job_lock(conn, "t2", row.id) is None
    assert await store.jobs_list(conn, "t2", before_id=None, status=None, name=None, limit=10) == []
    assert (
        await store.job_update(conn, "t2", row.id, SPEC, status="paused", next_run_at=None) is None
    )
    assert await store.job_delete(conn, "t2", row.id) is False
    assert await store.job_get(conn, "t1", row.id) == row


async def test_idempotency_key_is_per_tenant(conn: Any) -> None:
    async def insert(tenant: str) -> Any:
        return await store.job_insert(
            conn,
            tenant,
            SPEC,
            status="active",
            next_run_at=SOON,
            idempotency_key="k",
            request_hash="h",
            **AUDITED,
        )

    first = await insert("t1")
    repeat = await insert("t1")
    other_tenant = await insert("t2")
    assert first is not None and repeat is None and other_tenant is not None
    found = await store.job_get_by_idempotency_key(conn, "t1", "k")
    assert found == (first, "h")


async def test_update_bumps_version_and_updated_at(conn: Any) -> None:
    row = await store.job_insert(conn, "t1", SPEC, status="active", next_run_at=SOON, **AUDITED)
    assert row is not None
    later = SOON + timedelta(hours=1)
    updated = await store.job_update(conn, "t1", row.id, SPEC, status="active", next_run_at=later)
    assert updated is not None
    assert (updated.version, updated.next_run_at) == (2, later)
    assert updated.updated_at >= row.updated_at


async def test_due_index_is_used_for_the_claim_shape(conn: Any) -> None:
    for _ in range(50):
        await store.job_insert(
            conn, "t1", SPEC, status="paused", next_run_at=None, **audited(SPEC, "paused")
        )
    await conn.execute("ANALYZE jobs")
    await conn.execute("SET LOCAL enable_seqscan = off")
    plan = "\n".join(
        r[0]
        for r in await conn.fetch(
            "EXPLAIN SELECT id FROM jobs WHERE status = 'active' AND next_run_at <= now() "
            "ORDER BY next_run_at LIMIT 10"
        )
    )
    assert "jobs_due" in plan


async def test_one_run_per_tick_is_a_database_constraint(conn: Any) -> None:
    row = await store.job_insert(conn, "t1", SPEC, status="active", next_run_at=SOON, **AUDITED)
    assert row is not None
    insert = (
        "INSERT INTO job_runs (job_id, tenant, scheduled_for, trigger) VALUES ($1, 't1', $2, $3)"
    )
    await conn.execute(insert, row.id, SOON, "schedule")
    await conn.execute(insert, row.id, SOON, "manual")  # a manual run of the same instant is fine
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert, row.id, SOON, "schedule")
