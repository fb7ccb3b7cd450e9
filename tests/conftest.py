"""Fixtures: a PostgreSQL server, a fresh database per test run, the app on a real port,
a webhook client and a webhook receiver. Plain helpers are in helpers.py.

The server comes from SCHEDULER_TEST_DATABASE_URL if set, else from testcontainers
when a Docker engine answers, else from an embedded PostgreSQL started here. Each run
creates its own database and drops it afterwards.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc import store
from scheduler_svc.config import Settings
from scheduler_svc.store import db, migrate
from scheduler_svc.store.embedded import EmbeddedPostgres
from scheduler_svc.targets.http import WebhookClient, webhook_client
from tests.factories import partitions
from tests.helpers import embedded_data_dir, running_app, scratch_database
from tests.webhook_receiver import WebhookReceiver, serve_receiver

SERVER_URL_ENV = "SCHEDULER_TEST_DATABASE_URL"


def _docker_answers() -> bool:
    """Whether a Docker engine answers; a missing local socket is a quick no."""
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A URL of a PostgreSQL server on which the tests may create databases."""
    url = os.environ.get(SERVER_URL_ENV)
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    with embedded_data_dir() as data_dir:
        embedded = EmbeddedPostgres(data_dir, cleanup="delete")
        try:
            yield embedded.admin_url()
        finally:
            embedded.stop()


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A directory for an embedded server's data, outside pytest's temporary root."""
    with embedded_data_dir() as path:
        yield path


@pytest.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A database of this test run, with the schema applied; dropped at the end."""
    async with scratch_database(postgres_server_url) as url:
        conn = await asyncpg.connect(db.connect_options(url)[0])
        try:
            await migrate.migrate(conn)
        finally:
            await conn.close()
        yield url


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool on the test run's database."""
    pool = await db.create_pool(database_url)
    yield pool
    await pool.close()


@pytest.fixture
async def engine_conn(database_url: str) -> AsyncIterator[Any]:
    """A session set up as the engine's are (db.create_pool's worker pool: generic plans,
    no sequential scans), for tests of the plans it makes."""
    engine = await db.create_pool(database_url, max_size=1, durable=False)
    try:
        async with engine.acquire() as conn:
            yield conn
    finally:
        await engine.close()


@pytest.fixture
async def conn(pool: asyncpg.Pool[Any]) -> AsyncIterator[Any]:
    """A connection inside a transaction that is rolled back after the test."""
    async with pool.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        try:
            yield connection
        finally:
            await transaction.rollback()


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    """Default settings on the test database."""
    return Settings(database_url=database_url, worker_id="test-worker", role="api")


@pytest.fixture(scope="session")
async def api_url(database_url: str, pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    """The app with default settings, served once for the whole run."""
    settings = Settings(database_url=database_url, worker_id="test-api", role="api")
    async with running_app(settings, pool) as url:
        yield url


@pytest.fixture
async def clean(pool: asyncpg.Pool[Any]) -> None:
    """Start the test from empty tables.

    DELETE, not TRUNCATE: on the few rows a test leaves it takes under a millisecond,
    where TRUNCATE makes new files for each table and took some 40 ms, a test.
    """
    await pool.execute(
        "DELETE FROM job_runs; DELETE FROM jobs; DELETE FROM api_keys;"
        " DELETE FROM alerts; DELETE FROM audit; DELETE FROM tenant_secrets;"
        # Where a new database has it: tests that raised it leave no trace.
        " UPDATE unfinished_runs_floor SET since = '-infinity'"
    )


@pytest.fixture
async def week_of_partitions(pool: Any) -> AsyncIterator[None]:
    """After the test, job_runs' partitions are today's and the next week's again (tests
    that make older and later ones use it), as the other test modules expect."""
    yield
    today = (await store.db_now(pool)).astimezone(UTC).replace(hour=0, minute=0, second=0)
    for name, bounds in (await partitions(pool)).items():
        if bounds is not None and not today <= bounds[0] <= today + timedelta(days=7):
            await pool.execute(f'DROP TABLE "{name}"')
    await pool.execute("SELECT history_partitions_create(7)")


@pytest.fixture
async def client(api_url: str, clean: None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the shared app, on empty tables."""
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as http:
        yield http


@pytest.fixture(scope="session")
def make_settings(settings: Settings) -> Any:
    """Settings with some fields changed: make_settings(max_body_bytes=2048)."""

    def make(**changes: Any) -> Settings:
        return replace(settings, **changes)

    return make


@pytest.fixture
async def http() -> AsyncIterator[WebhookClient]:
    """A webhook client that may call private addresses (the receiver is on loopback)."""
    async with webhook_client(allow_private=True) as client:
        yield client


@pytest.fixture(scope="session")
async def receiver_server() -> AsyncIterator[WebhookReceiver]:
    async with serve_receiver() as server:
        yield server


@pytest.fixture
def receiver(receiver_server: WebhookReceiver) -> WebhookReceiver:
    """The shared webhook receiver, reset for this test (starting one per test costs 0.2 s)."""
    receiver_server.reset()
    return receiver_server
