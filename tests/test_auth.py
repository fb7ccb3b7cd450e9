"""Authentication and scopes: API keys, the open-on-loopback rule, 401 and 403 as problems."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import asyncpg
import httpx
import pytest
import structlog

from scheduler_svc import store
from scheduler_svc.config import ConfigError, Settings
from scheduler_svc.security import auth, principals
from tests.helpers import assert_problem, assert_unauthorized, running_app
from tests.principals import bearer, make_key

JOB = {"name": "job", "schedule": "@every 1m"}


def operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document that needs a principal."""
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "patch", "put", "delete"} and op.get("security")
    ]


async def test_key_format_has_a_visible_prefix_and_256_random_bits() -> None:
    keys = {auth.new_key() for _ in range(50)}
    assert len(keys) == 50
    for key, prefix in keys:
        assert key.startswith(prefix + "_") and prefix.startswith("sch_") and len(prefix) == 12
        assert len(key) - len(prefix) - 1 == 43  # base64url of 32 bytes
        assert auth.key_prefix(key) == prefix
        assert auth.key_hash(key) == hashlib.sha256(key.encode()).digest()
    assert auth.key_prefix("sch_short_abc") is None


async def test_only_the_hash_of_a_key_is_stored(pool: asyncpg.Pool[Any], clean: None) -> None:
    key = await make_key(pool, "acme")
    row = await pool.fetchrow("SELECT * FROM api_keys")
    assert row is not None
    assert key not in str(dict(row)) and key[13:] not in str(dict(row))
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert row["prefix"] == auth.key_prefix(key)


async def test_open_on_loopback_serves_the_default_tenant(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    response = await client.post("/jobs", json=JOB)
    assert response.status_code == 201
    tenant = await pool.fetchval("SELECT tenant FROM jobs WHERE id = $1", response.json()["id"])
    assert tenant == principals.DEFAULT_TENANT


async def test_a_key_created_while_running_closes_the_open_service(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    assert (await client.get("/jobs")).status_code == 200
    key = await make_key(pool, "acme")
    problem = assert_unauthorized(await client.get("/jobs"))
    assert "Bearer" in problem["detail"]
    assert (await client.get("/jobs", headers=bearer(key))).status_code == 200
    # Revoking the only key does not reopen the service.
    await store.api_key_revoke(pool, auth.key_prefix(key) or "")
    assert_unauthorized(await client.get("/jobs"))


@pytest.mark.parametrize(
    ("case", "authorization"),
    [
        ("empty", ""),
        ("basic scheme", "Basic dXNlcjpwYXNz"),
        ("bearer without credential", "Bearer"),
        ("not a key", "Bearer hello"),
        ("malformed key", "Bearer sch_abc"),
        ("unknown prefix", "Bearer sch_zzzzzzzz_" + "A" * 43),
        ("right prefix, wrong secret", None),
        ("revoked key", None),
    ],
)
async def test_bad_credentials_get_401_with_a_bearer_challenge(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], case: str, authorization: str | None
) -> None:
    key = await make_key(pool, "acme")
    if case == "right prefix, wrong secret":
        authorization = f"Bearer {auth.key_prefix(key)}_{'B' * 43}"
    elif case == "revoked key":
        await store.api_key_revoke(pool, auth.key_prefix(key) or "")
        authorization = f"Bearer {key}"
    assert authorization is not None
    for method, path in [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/1")]:
        response = await client.request(
            method, path, headers={"Authorization": authorization}, json=JOB
        )
        problem = assert_unauthorized(response)
        assert key not in response.text and key not in problem["detail"]
        assert response.headers.get("x-request-id")


async def test_401_comes_before_validation_and_404(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    await make_key(pool, "acme")
    assert_unauthorized(await client.post("/jobs", content=b"{not json"))
    assert_unauthorized(await client.get("/jobs/0"))
    assert_unauthorized(await client.get("/jobs/123456"))


async def test_exempt_routes_need_no_key(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    await make_key(pool, "acme")
    for path in ["/", "/healthz", "/readyz", "/api", "/api/openapi.json"]:
        assert (await client.get(path)).status_code == 200, path
    assert_unauthorized(await client.get("/schedules/preview", params={"schedule": "@daily"}))


async def test_scopes_decide_reads_and_writes_on_every_route(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    document = (await client.get("/api/openapi.json")).json()
    routes = operations(document)
    assert len(routes) >= 8
    reader = bearer(await make_key(pool, "acme", principals.READ))
    writer = bearer(await make_key(pool, "acme", principals.WRITE))
    admin = bearer(await make_key(pool, "acme", principals.ADMIN))
    job = (await client.post("/jobs", json=JOB, headers=admin)).json()
    for method, path in routes:
        url = path.replace("{job_id}", str(job["id"])).replace("{run_id}", "1")
        reads = method == "GET"
        for headers, allowed in [(reader, reads), (writer, not reads), (admin, True)]:
            before = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job["id"])
            response = await client.request(method, url, headers=headers)
            if allowed:
                assert response.status_code != 403, (method, path, response.text)
            else:
                problem = assert_problem(response, 403)
                needed = principals.READ if reads else principals.WRITE
                assert needed in problem["detail"]
                assert f'scope="{needed}"' in response.headers["www-authenticate"]
                after = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job["id"])
                assert after == before, (method, path)


async def test_a_key_acts_for_its_own_tenant(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    key = await make_key(pool, "acme")
    job = (await client.post("/jobs", json=JOB, headers=bearer(key))).json()
    tenant = await pool.fetchval("SELECT tenant FROM jobs WHERE id = $1", job["id"])
    assert tenant == "acme"


async def test_revoking_a_key_takes_effect_within_the_key_cache_window(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    key = await make_key(pool, "acme")
    assert (await client.get("/jobs", headers=bearer(key))).status_code == 200
    await store.api_key_revoke(pool, auth.key_prefix(key) or "")
    revoked_at = asyncio.get_running_loop().time()
    window = Settings().api_key_cache_s
    while (response := await client.get("/jobs", headers=bearer(key))).status_code == 200:
        assert asyncio.get_running_loop().time() - revoked_at < window + 0.5
        await asyncio.sleep(0.05)
    problem = assert_unauthorized(response)
    assert "revoked" in problem["detail"]


async def test_without_the_key_cache_revoking_takes_effect_at_once(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    key = await make_key(pool, "acme")
    async with (
        running_app(make_settings(api_key_cache_s=0), pool) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert (await http.get("/jobs", headers=bearer(key))).status_code == 200
        await store.api_key_revoke(pool, auth.key_prefix(key) or "")
        problem = assert_unauthorized(await http.get("/jobs", headers=bearer(key)))
        assert "revoked" in problem["detail"]


async def test_last_used_is_recorded_at_most_once_a_minute(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    key = await make_key(pool, "acme")
    prefix = auth.key_prefix(key)
    assert (
        await pool.fetchval("SELECT last_used_at FROM api_keys WHERE prefix = $1", prefix) is None
    )
    await client.get("/jobs", headers=bearer(key))
    first = await pool.fetchval("SELECT last_used_at FROM api_keys WHERE prefix = $1", prefix)
    assert first is not None
    for _ in range(3):
        await client.get("/jobs", headers=bearer(key))
    assert (
        await pool.fetchval("SELECT last_used_at FROM api_keys WHERE prefix = $1", prefix) == first
    )
    await pool.execute(
        "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE prefix = $1", prefix
    )
    # The key is looked up again once the key cache has forgotten it.
    await asyncio.sleep(Settings().api_key_cache_s + 0.1)
    await client.get("/jobs", headers=bearer(key))
    later = await pool.fetchval("SELECT last_used_at FROM api_keys WHERE prefix = $1", prefix)
    assert later > first


async def test_keys_required_closes_loopback_too(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    async with (
        running_app(make_settings(api_keys_required=True), pool) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert_unauthorized(await http.get("/jobs"))
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("host", "insecure", "open_"),
    [
        ("127.0.0.1", False, True),
        ("127.1.2.3", False, True),
        ("::1", False, True),
        ("localhost", False, True),
        ("0.0.0.0", False, False),
        ("192.168.1.10", False, False),
        ("::", False, False),
        ("0.0.0.0", True, True),
    ],
)
async def test_open_mode_follows_the_listen_address(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None, host: str, insecure: bool, open_: bool
) -> None:
    settings = make_settings(host=host, insecure=insecure)
    assert auth.may_serve_open(settings) is open_
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/jobs")
        if open_:
            assert response.status_code == 200
        else:
            assert_unauthorized(response)


def test_start_rule_refuses_open_on_a_public_address(make_settings: Any) -> None:
    with pytest.raises(ConfigError, match="--insecure"):
        auth.check_start(make_settings(host="0.0.0.0"), keys_exist=False)
    auth.check_start(make_settings(host="0.0.0.0"), keys_exist=True)
    auth.check_start(make_settings(host="0.0.0.0", insecure=True), keys_exist=False)
    auth.check_start(make_settings(host="127.0.0.1"), keys_exist=False)
    auth.check_start(make_settings(host="0.0.0.0", jwt_secret="x" * 32), keys_exist=False)
    auth.check_start(make_settings(host="0.0.0.0", role="worker"), keys_exist=False)
    with pytest.raises(ConfigError):
        auth.check_start(make_settings(host="0.0.0.0", role="api"), keys_exist=False)


def test_insecure_is_a_flag_never_an_environment_variable() -> None:
    settings = Settings.from_env(
        {"SCHEDULER_INSECURE": "true", "SCHEDULER_JWT_AUDIENCE": "scheduler"}, env_file=None
    )
    assert settings.insecure is False
    assert settings.unknown_variables == ("SCHEDULER_INSECURE",)
    assert settings.jwt_audience == "scheduler"


def test_open_start_on_loopback_logs_a_warning(make_settings: Any) -> None:
    with structlog.testing.capture_logs() as events:
        auth.check_start(make_settings(host="127.0.0.1"), keys_exist=False)
        auth.check_start(make_settings(host="127.0.0.1"), keys_exist=True)
    assert [e["event"] for e in events] == ["open_mode"]
    assert events[0]["log_level"] == "warning"
    assert "without authentication" in events[0]["detail"]
