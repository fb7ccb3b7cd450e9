"""Rate limits per principal: 429 problems with Retry-After and RateLimit-* headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from litestar import Litestar
from litestar.stores.memory import MemoryStore

from scheduler_svc import ratelimit
from scheduler_svc.app import create_app
from scheduler_svc.config import RateLimit
from tests.conftest import running_app
from tests.principals import bearer, make_key
from tests.test_auth import assert_problem


async def test_429_after_the_limit_with_retry_after_and_ratelimit_headers(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    settings = make_settings(rate_limit=RateLimit(3, "minute"))
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        for remaining in (2, 1, 0):
            response = await http.get("/jobs")
            assert response.status_code == 200
            assert response.headers["ratelimit-limit"] == "3"
            assert response.headers["ratelimit-remaining"] == str(remaining)
        response = await http.get("/jobs")
        assert_problem(response, 429)
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.headers["ratelimit-remaining"] == "0"
        assert response.headers["ratelimit-policy"] == "3; w=60"
        assert int(response.headers["ratelimit-reset"]) <= 60
        assert response.headers["x-request-id"]  # answered inside the middleware stack
        # Health and docs routes are never limited.
        for path in ("/", "/healthz", "/readyz", "/api/openapi.json"):
            assert (await http.get(path)).status_code == 200, path


async def test_each_principal_has_its_own_budget(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    first = bearer(await make_key(pool, "acme"))
    second = bearer(await make_key(pool, "acme"))
    other_tenant = bearer(await make_key(pool, "globex"))
    settings = make_settings(rate_limit=RateLimit(2, "minute"))
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        for _ in range(2):
            assert (await http.get("/jobs", headers=first)).status_code == 200
        assert (await http.get("/jobs", headers=first)).status_code == 429
        assert (await http.get("/jobs", headers=second)).status_code == 200
        assert (await http.get("/jobs", headers=other_tenant)).status_code == 200


async def test_refused_requests_are_limited_by_client_address(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    key = bearer(await make_key(pool, "acme"))
    settings = make_settings(rate_limit=RateLimit(2, "minute"))
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        bad = bearer("sch_zzzzzzzz_" + "A" * 43)
        assert (await http.get("/jobs", headers=bad)).status_code == 401
        assert (await http.get("/jobs")).status_code == 401
        assert (await http.get("/jobs", headers=bad)).status_code == 429
        # A valid key spends its own budget, not the address's.
        assert (await http.get("/jobs", headers=key)).status_code == 200


async def test_limit_per_second(make_settings: Any, pool: asyncpg.Pool[Any], clean: None) -> None:
    settings = make_settings(rate_limit=RateLimit(1, "second"))
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        statuses = [(await http.get("/jobs")).status_code for _ in range(2)]
        # Two requests may straddle a second boundary; a third within it cannot pass.
        if statuses == [200, 200]:
            statuses.append((await http.get("/jobs")).status_code)
        assert statuses[-1] == 429
        response = await http.get("/jobs")
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert response.headers["ratelimit-policy"] == "1; w=1"


async def test_expired_counters_are_swept(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "SWEEP_INTERVAL_S", 0.0)
    app = create_app(make_settings(rate_limit=RateLimit(5, "second")), pool=pool)
    stale = "RateLimitMiddleware::address:203.0.113.9"
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/jobs")).status_code == 200
        store = app.stores.get("rate_limit")
        assert isinstance(store, MemoryStore)
        await store.set(stale, b"{}", expires_in=60)
        store._store[stale].expires_at = datetime.now(UTC) - timedelta(seconds=1)
        assert (await http.get("/jobs")).status_code == 200
        assert stale not in store._store
        assert len(store._store) == 1  # this client's own counter


@asynccontextmanager
async def serve(app: Litestar) -> AsyncIterator[str]:
    """Serve a given app object (to look into its stores) on a free loopback port."""
    server = uvicorn.Server(uvicorn.Config(app, port=0, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
