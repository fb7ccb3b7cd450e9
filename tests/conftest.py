"""Fixtures: a PostgreSQL server, a fresh database per test run, and the app on a real port.

The server comes from SCHEDULER_TEST_DATABASE_URL if set, else from testcontainers
when a Docker engine answers, else from an embedded PostgreSQL started here. Each run
creates its own database and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn

from scheduler_svc import db
from scheduler_svc.app import create_app
from scheduler_svc.config import Settings
from scheduler_svc.pg_embedded import EmbeddedPostgres

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


@contextmanager
def embedded_data_dir() -> Iterator[Path]:
    """A directory for an embedded server's data, removed afterwards.

    Not under pytest's tmp_path: as root, the server runs as its own user, and every
    pytest session that starts makes pytest's temporary root private again.
    """
    path = Path(tempfile.mkdtemp(prefix="scheduler-test-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A directory for an embedded server's data, outside pytest's temporary root."""
    with embedded_data_dir() as path:
        yield path


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A database of this test run, with the schema applied; dropped at the end."""
    name = f"scheduler_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin_dsn, settings = db.connect_options(postgres_server_url)
    admin = await asyncpg.connect(admin_dsn, server_settings=settings)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = with_database(postgres_server_url, name)
        conn = await asyncpg.connect(db.connect_options(url)[0])
        try:
            await db.apply_schema(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool on the test run's database."""
    pool = await db.create_pool(database_url)
    yield pool
    await pool.close()


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


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Default settings on the test database."""
    return Settings(database_url=database_url, worker_id="test-worker", role="api")


@asynccontextmanager
async def running_app(
    settings: Settings, pool: asyncpg.Pool[Any], **app_options: Any
) -> AsyncIterator[str]:
    """Serve the app over real HTTP on a free loopback port; yield its base URL.

    With settings.role "all" or "worker" the app runs a worker too (the default
    settings fixture says "api": HTTP only)."""
    config = uvicorn.Config(
        create_app(settings, pool=pool, **app_options),
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        if task.done() or asyncio.get_running_loop().time() > deadline:
            raise RuntimeError("the test server did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def api_url(database_url: str, pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    """The app with default settings, served once for the whole run."""
    settings = Settings(database_url=database_url, worker_id="test-api", role="api")
    async with running_app(settings, pool) as url:
        yield url


@pytest.fixture
async def clean(pool: asyncpg.Pool[Any]) -> None:
    """Start the test from empty tables."""
    await pool.execute("TRUNCATE jobs, job_runs, api_keys")


@pytest.fixture
async def client(api_url: str, clean: None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the shared app, on empty tables."""
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as http:
        yield http


@pytest.fixture
def make_settings(settings: Settings) -> Any:
    """Settings with some fields changed: make_settings(max_body_bytes=2048)."""

    def make(**changes: Any) -> Settings:
        return replace(settings, **changes)

    return make
