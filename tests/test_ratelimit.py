"""Rate limits per principal: 429 problems with Retry-After and RateLimit-* headers."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import httpx

from scheduler_svc.config import RateLimit
from scheduler_svc.security import ratelimit
from tests.helpers import assert_problem, running_app
from tests.principals import bearer, make_key


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


async def test_a_principal_has_one_budget_across_routes(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    # Litestar builds each route's middleware anew: the budget must not be per route.
    settings = make_settings(rate_limit=RateLimit(3, "minute"))
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        job = (await http.post("/jobs", json={"name": "a", "schedule": "@every 1h"})).json()
        assert (await http.get("/jobs")).headers["ratelimit-remaining"] == "1"
        assert (await http.get(f"/jobs/{job['id']}")).headers["ratelimit-remaining"] == "0"
        assert_problem(await http.get(f"/jobs/{job['id']}/runs"), 429)
        assert_problem(await http.get(f"/jobs/{job['id']}"), 429)


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


async def test_expired_counters_are_swept() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    budgets = ratelimit.RateBudgets(RateLimit(5, "second"))
    limiter = ratelimit.RateLimiter(app, budgets)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/jobs", "client": ("198.51.100.7", 1)}
    await limiter(scope, None, send)  # type: ignore[arg-type]
    assert dict(sent[0]["headers"])[b"ratelimit-remaining"] == b"4"
    budgets.windows["address:203.0.113.9"] = [int(time.time()) - 1, 3]
    budgets.sweep()
    assert list(budgets.windows) == ["address:198.51.100.7"]  # this client's own counter
